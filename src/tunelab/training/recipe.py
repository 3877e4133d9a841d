"""The training recipe, top to bottom. Task-agnostic: the task plug-in answers every task question.

config -> run dir -> data (read, validate, split) -> task (fit, encode) -> model (load, LoRA)
-> Trainer (train, evaluate before/after) -> final model + task metrics from real predictions
-> metrics.json, eval_predictions.jsonl, plots.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunelab.config import RunConfig, load_config, save_config
from tunelab.data.pipeline import load_splits
from tunelab.errors import UserError
from tunelab.io import atomic_path, atomic_write_json
from tunelab.models import apply_lora, detect_hardware, load_model, load_tokenizer, trainable_summary
from tunelab.models.loading import check_head, predict_dtype
from tunelab.tasks import get_task
from tunelab.tasks.base import GenerativeTask
from tunelab.training.callbacks import HistoryCallback, ProgressCallback, TimeEstimateCallback, plot_history
from tunelab.training.rundir import RunDir


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train(config: RunConfig, resume: bool = False, overwrite: bool = False,
          echo: Callable[[str], None] = print) -> RunResult:
    # 1. Run directory. Resuming continues the stored config, whatever the command line says now.
    run = RunDir.prepare(config.train.output_dir or RunDir.default_path(config.task.name), resume, overwrite)
    if resume:
        config = load_config(run.config)
    config.train.output_dir = str(run.path)
    task = get_task(config.task.name)(config)
    hardware = detect_hardware(config.model)
    echo(f"run dir: {run.path}   task: {task.name}   model: {config.model.name_or_path}   hardware: {hardware.describe()}")

    check_head(config.model, task.head)  # an encoder cannot generate: say so before any data work

    # 2. Data: read, validate, filter, split, length check; report every dropped row.
    tokenizer = load_tokenizer(config.model)
    splits = load_splits(config, task, tokenizer)
    max_length = config.train.max_length
    for report in splits.reports:
        for line in report.lines():
            echo(line)
    echo(f"split: {len(splits.train)} train / {len(splits.eval)} eval rows")
    held_out = {"source": config.data.eval_path or config.data.train_path, "rows": splits.eval_rows()}
    if resume and run.read_eval_rows() not in (None, held_out):
        raise UserError(f"--resume: the held-out rows of {held_out['source']} differ from the ones this run started "
                        "with (the data file changed?); start a new run instead")

    # 3. Task: learn what it needs from train data, turn rows into examples.
    task.fit(splits.train)
    train_examples = task.encode_train(splits.train, tokenizer, max_length)
    eval_examples = task.encode(splits.eval, tokenizer, max_length) if not splits.eval.empty else []
    if not train_examples:
        raise UserError(f"{config.data.train_path}: no trainable examples (all answers truncated away at "
                        f"max_length={max_length}?)")
    # What the run predicts in is decided now and saved with it, so predictions reproduce the eval metrics.
    config.model.predict_dtype = str(predict_dtype(config.model, hardware)).removeprefix("torch.")
    if is_main_process():
        save_config(config, run.config)
        atomic_write_json(run.task_state, task.state())
        atomic_write_json(run.data_report, [r.to_dict() for r in splits.reports])
        atomic_write_json(run.eval_rows, held_out)

    # 4. Model: the task's head, on the detected hardware, with LoRA unless full fine-tuning. Seeded first,
    # so a fresh head and the LoRA matrices start the same in every process.
    from transformers import set_seed

    set_seed(config.train.seed)
    model = load_model(config.model, task.head, hardware, task.head_kwargs(), tokenizer=tokenizer,
                       frozen_base=config.lora.enabled)
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model = apply_lora(model, config.lora, task.head, task.lora_modules_to_save(),
                       quantized=config.model.load_in_4bit or config.model.load_in_8bit,
                       gradient_checkpointing=bool(config.train.gradient_checkpointing))
    echo(trainable_summary(model))

    # 5. Train with the ecosystem's Trainer; our callbacks write the run dir.
    from tunelab.training.arguments import training_arguments
    from transformers.trainer_callback import PrinterCallback

    from tunelab.training.trainer import TunelabTrainer

    args = training_arguments(config, run, hardware, task, n_train=len(train_examples), has_eval=bool(eval_examples))
    callbacks = [HistoryCallback(run, resume_step=run.last_checkpoint_step() if resume else None), ProgressCallback(echo),
                 TimeEstimateCallback(config.train.estimate_steps, lambda per_step, remaining: echo(
                     f"estimated training time: {_minutes(per_step * remaining)} more "
                     f"({per_step:.2f} s/step measured over {config.train.estimate_steps} steps, {remaining} steps left)"))]
    schedule = task.in_training_generation() if isinstance(task, GenerativeTask) else None
    if schedule and not splits.eval.empty:
        from tunelab.training.generation_eval import GenerationEvalCallback

        every, rows = schedule
        callbacks.append(GenerationEvalCallback(task, tokenizer, splits.eval.iloc[:rows], every=every))
    trainer = TunelabTrainer(model=model, args=args, data_collator=task.collate(tokenizer),
                             train_dataset=train_examples, eval_dataset=eval_examples or None,
                             processing_class=tokenizer, compute_metrics=task.trainer_metrics(), callbacks=callbacks,
                             matmul_precision=config.model.matmul_precision, cpu_threads=config.train.cpu_threads)
    if trainer.cpu_threads is not None:
        echo(f"cpu threads: {trainer.cpu_threads}   float32 matmul precision: {config.model.matmul_precision}")
    trainer.remove_callback(PrinterCallback)  # ProgressCallback prints a compact line instead
    metrics: dict = {}
    if eval_examples and not resume:
        before = trainer.evaluate(metric_key_prefix="eval_before")
        metrics.update({k: v for k, v in before.items() if not k.endswith(("_runtime", "per_second"))})
        echo(f"eval loss before training: {before['eval_before_loss']:.4f}")
        if is_main_process():  # kept for a resumed run's before/after comparison
            atomic_write_json(run.metrics, metrics)
    elif resume:
        metrics.update({k: v for k, v in run.read_metrics().items() if k.startswith("eval_before")})
    output = trainer.train(resume_from_checkpoint=True if resume else None)
    metrics["train_loss"] = output.training_loss
    metrics["train_runtime_s"] = round(output.metrics.get("train_runtime", 0.0), 2)
    metrics["train_steps"] = output.global_step
    metrics["train_examples"] = len(train_examples)
    if eval_examples:
        after = trainer.evaluate()
        metrics.update({k: v for k, v in after.items() if not k.endswith(("_runtime", "per_second"))})
        if "eval_loss" in after:
            metrics["eval_perplexity"] = math.exp(min(after["eval_loss"], 50))
        echo(f"eval loss after training: {after.get('eval_loss', float('nan')):.4f}")

    # 6. Final model, task metrics from real predictions, metrics.json, plots.
    if is_main_process():
        with atomic_path(run.final, is_dir=True) as tmp:
            trainer.save_model(str(tmp))
            tokenizer.save_pretrained(str(tmp))
    if not splits.eval.empty:
        from tunelab.inference.predict import evaluate_rows

        model.eval()
        scores, predictions = evaluate_rows(task, trainer.model, tokenizer, splits.eval)
        metrics.update(scores)
        if predictions is not None and is_main_process():
            predictions.insert(0, "row", [int(i) + 1 for i in predictions.index])
            task.write_predictions(predictions, run.eval_predictions, "jsonl")
    if is_main_process():
        atomic_write_json(run.metrics, metrics)
        plot_history(run)
    echo(f"saved: {run.final}  metrics: {run.metrics}")
    return RunResult(run_dir=run.path, metrics=metrics)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
