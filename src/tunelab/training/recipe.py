"""The training recipe, top to bottom. Task-agnostic: the task plug-in answers every task question.

config -> run dir -> data (read, validate, split) -> task (fit, encode) -> model (load, LoRA)
-> Trainer (train, evaluate before/after) -> final model + task metrics from real predictions
-> metrics.json, eval_predictions.jsonl, plots.

Interruptions and failures (`train`): Ctrl-C or SIGTERM while training finishes the step, saves a checkpoint
and stops (`Interrupted`, a KeyboardInterrupt whose message says how to resume); a run that fails or is
interrupted before its first checkpoint deletes what it wrote (and puts back a run it was replacing), so the
same command starts it again; a full disk or read-only folder is one clear error.
Resuming (`--resume`): the run's stored config is continued; of the config given now, only a new length
(train.max_steps / train.epochs) applies and every other difference is named as ignored. A finished run
is not trained again ("already finished"; the CLI exits 0).
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tunelab.config import RunConfig, load_config, save_config
from tunelab.data.pipeline import load_splits
from tunelab.errors import UserError
from tunelab.io import atomic_write_json, disk_full
from tunelab.io.atomic import replace_path
from tunelab.models import apply_lora, detect_hardware, load_model, load_tokenizer, trainable_summary
from tunelab.models.loading import check_head, classification_pooling, predict_dtype
from tunelab.tasks import get_task
from tunelab.tasks.base import GenerativeTask, ProbabilisticTask, SequenceClassificationTask
from tunelab.training.callbacks import (
    HistoryCallback, Interrupted, LearningWatch, ProgressCallback, StopOnSignal, TimeEstimateCallback, plot_history,
)
from tunelab.training.report import (
    duration, planned_tokens, row_losses, seconds_per_token, summary_lines,
)
from tunelab.training.rundir import ConsoleLog, RunDir, checkpoint_problem, checkpoint_step, missing_optimizer_state


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict


def is_main_process() -> bool:
    """Global rank 0 (the process that writes the run dir), known before any process group exists: torchrun and
    accelerate launch set RANK; an MPI launcher (accelerate's multi-CPU mode) sets its own variable."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"):
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name]) == 0
    return True


def train(config: RunConfig, resume: bool = False, overwrite: bool = False,
          echo: Callable[[str], None] = print, extra_callbacks: Sequence = ()) -> RunResult:
    """Train as `config` says into its run directory; `extra_callbacks` (TrainerCallbacks) join the run's own,
    e.g. a sweep's pruning callback."""
    if resume and not config.train.output_dir:
        raise UserError("--resume needs the run to continue: pass --output-dir RUN_DIR (or set train.output_dir)")
    main = is_main_process()
    run = RunDir.prepare(config.train.output_dir or RunDir.default_path(config.task.name), resume, overwrite,
                         main=main, echo=echo)
    log = ConsoleLog(run.train_log, append=resume) if main else None
    if log and not resume:
        log.start()  # a resume starts its log once it knows there is something to do (`_run`)
    echo = log.tee(echo) if log else echo if main else _silent  # under torchrun: one copy of each line (rank 0)
    stopper = StopOnSignal()
    try:
        with stopper.installed():
            return _run(run, config, resume, echo, stopper, extra_callbacks, log)
    except BaseException as exc:
        if log:
            log.close()  # before a failed new run's files are deleted (an open file would block that on Windows)
        # Checked before `_after_failure`, which may put back the run this one was replacing (its checkpoints).
        kept = run.path.is_dir() and run.last_complete_checkpoint() is not None
        error = _after_failure(run, resume, exc, main)
        if log and kept:  # this run is kept (resumable): its log says why it stopped
            log.add_after_close(f"stopped: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
        raise error from None
    finally:
        if log:
            log.close()
        run.release()


def _silent(*args, **kwargs) -> None:
    """`echo` of the processes other than the main one."""


def _run(run: RunDir, config: RunConfig, resume: bool, echo: Callable[[str], None], stopper: StopOnSignal,
         extra_callbacks: Sequence = (), log: ConsoleLog | None = None) -> RunResult:
    # 1. Run directory (prepared by `train`). Resuming continues the stored config (of the given one, only the
    # run's length may change) from the newest complete checkpoint.
    checkpoint = None
    if resume:
        config, checkpoint = _resume_plan(run, config, echo)
        if checkpoint is None:  # already finished: nothing to do
            return RunResult(run_dir=run.path, metrics=run.read_metrics())
        if log:
            log.start()  # train.log gets the resume's lines from its resume plan on
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
    from tunelab.data.tokenizer_fit import warn_on_tokenizer_fit  # > ~2 tokens per letter: name a better model
    warn_on_tokenizer_fit(tokenizer, splits.train, config.model.name_or_path, echo)
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
    config.model.predict_dtype = str(predict_dtype(config.model, hardware, isinstance(task, GenerativeTask))
                                     ).removeprefix("torch.")
    if task.head == "sequence_classification":
        config.model.pooling = classification_pooling(config.model)
    if is_main_process():
        save_config(config, run.config)
        run.commit()  # the run this one replaces (--overwrite) is deleted only now
        atomic_write_json(run.task_state, task.state())
        atomic_write_json(run.data_report, [r.to_dict() for r in splits.reports])
        atomic_write_json(run.eval_rows, held_out)

    # 4. Model: the task's head, on the detected hardware, with LoRA unless full fine-tuning. Seeded first,
    # so a fresh head and the LoRA matrices start the same in every process.
    model = load_model_for_training(config, task, hardware, tokenizer, train_examples,
                                    probe_head_first=checkpoint is None, echo=echo)
    echo(trainable_summary(model))

    # 5. Train with the ecosystem's Trainer; our callbacks write the run dir.
    from tunelab.training.arguments import training_arguments
    from transformers.trainer_callback import PrinterCallback

    args = training_arguments(config, run, hardware, task, n_train=len(train_examples), has_eval=bool(eval_examples))
    saved_at = (checkpoint / "trainer_state.json").stat().st_mtime if checkpoint is not None else None
    callbacks = [HistoryCallback(run, resume_step=checkpoint_step(checkpoint) if checkpoint else None, saved_at=saved_at),
                 ProgressCallback(echo), stopper,
                 TimeEstimateCallback(config.train.estimate_steps, lambda per_step, remaining: echo(
                     f"estimated training time: {duration(per_step * remaining)} more "
                     f"({per_step:.2f} s/step measured over {config.train.estimate_steps} steps, {remaining} steps left)")),
                 *extra_callbacks]
    schedule = task.in_training_generation() if isinstance(task, GenerativeTask) else None
    if schedule and not splits.eval.empty:
        from tunelab.training.generation_eval import GenerationEvalCallback

        every, rows = schedule
        callbacks.append(GenerationEvalCallback(task, tokenizer, splits.eval.iloc[:rows], every=every))
    if isinstance(task, SequenceClassificationTask) and eval_examples:
        from tunelab.tasks.review import LIKELY_CAUSES

        callbacks.append(LearningWatch(echo, len(task.classes), LIKELY_CAUSES))
    trainer = make_trainer(config, task, model, tokenizer, args, train_examples, eval_examples, callbacks)
    stopper.trainer = trainer
    trainer.notice = echo
    if trainer.cpu_threads is not None:
        echo(f"cpu threads: {trainer.cpu_threads}   float32 matmul precision: {config.model.matmul_precision}")
    trainer.remove_callback(PrinterCallback)  # ProgressCallback prints a compact line instead
    if config.train.estimate_steps and is_main_process():
        _estimate_before_training(trainer, train_examples, checkpoint, config.train.estimate_steps, echo)
    _maybe_compile_blocks(config, trainer, echo)
    metrics: dict = {}
    if eval_examples and not resume:
        before = trainer.evaluate(metric_key_prefix="eval_before")
        metrics.update({k: v for k, v in before.items() if not k.endswith(("_runtime", "per_second"))})
        echo(f"eval loss before training: {before['eval_before_loss']:.4f}")
        if is_main_process():  # kept for a resumed run's before/after comparison
            atomic_write_json(run.metrics, metrics)
    elif resume:
        metrics.update({k: v for k, v in run.read_metrics().items() if k.startswith("eval_before")})
    output = _train_or_restore(trainer, run, checkpoint, echo)
    if output is None:
        return RunResult(run_dir=run.path, metrics=run.read_metrics())
    if stopper.received:  # Ctrl-C / SIGTERM: the step finished and a checkpoint was saved
        raise Interrupted(stopper.received)
    metrics["train_loss"] = output.training_loss
    metrics["train_runtime_s"] = round(output.metrics.get("train_runtime", 0.0), 2)
    metrics["train_steps"] = output.global_step
    metrics["train_examples"] = len(train_examples)
    if eval_examples:
        after = trainer.evaluate()
        metrics.update({k: v for k, v in after.items() if not k.endswith(("_runtime", "per_second"))})
        if "eval_loss" in after and isinstance(task, GenerativeTask):  # a perplexity of token predictions
            metrics["eval_perplexity"] = math.exp(min(after["eval_loss"], 50))

    # 6. Final model, task metrics from real predictions, metrics.json, plots.
    _save_final(trainer, tokenizer, run)
    predictions, scores, note = None, {}, None
    if isinstance(task, ProbabilisticTask):
        # The task's review: calibration on the held-out rows (kept in its state), the classical baseline
        # beside the model (saved in the run dir), warnings when the model learned little.
        model.eval()
        scores, predictions, lines = task.review(trainer.model, tokenizer, splits.train, splits.eval,
                                                 run.path if is_main_process() else None)
        metrics.update(scores)
        for line in lines:
            echo(line)
    elif not splits.eval.empty:
        from tunelab.inference.predict import evaluate_rows

        model.eval()
        scores, predictions = evaluate_rows(task, trainer.model, tokenizer, splits.eval)
        metrics.update(scores)
        if predictions is None and isinstance(task, GenerativeTask):
            # Nothing generated (e.g. sft's eval_max_rows: 0): each held-out row's loss is still the final
            # model's per-row result, and shows which answers it learned worst. In every process (under FSDP
            # each forward gathers weights from all ranks); only the main process writes them.
            predictions = row_losses(trainer, task, splits.eval, tokenizer, max_length)
            note = "each row's loss; set task.eval_max_rows to generate answers and score them"
    if predictions is not None and is_main_process():
        predictions.insert(0, "row", [int(i) + 1 for i in predictions.index])
        task.write_predictions(predictions, run.eval_predictions, "jsonl")
    if is_main_process():
        atomic_write_json(run.task_state, task.state())  # again: the review may have calibrated the task
        atomic_write_json(run.metrics, metrics)
        plot_history(run)
    where = None
    if predictions is not None:
        where = f"{run.eval_predictions} ({len(predictions)} rows" + (f": {note})" if note else ")")
    for line in summary_lines(metrics, scores, task.metric_for_best_model()[0], len(splits.eval), where,
                              str(run.final), str(run.metrics)):
        echo(line)
    return RunResult(run_dir=run.path, metrics=metrics)


# -- sections 4 and 5 helpers: the model and the Trainer, shared with `tunelab lab explain` -------------------
def load_model_for_training(config: RunConfig, task, hardware, tokenizer, train_examples,
                            probe_head_first: bool = True, echo: Callable[[str], None] = print):
    """The task's model as training starts from it: seeded first, so a fresh head and the LoRA matrices start
    the same in every process; a classifier's head probed first (`probe_head_first`: not when resuming);
    gradient checkpointing; LoRA unless full fine-tuning."""
    from transformers import set_seed

    set_seed(config.train.seed)
    model = load_model(config.model, task.head, hardware, task.head_kwargs(), tokenizer=tokenizer,
                       frozen_base=config.lora.enabled)
    if isinstance(task, SequenceClassificationTask) and task.probe_head_first() and probe_head_first:
        from tunelab.training.head_init import probe_head

        probed = probe_head(model, train_examples, task.collate(tokenizer), len(task.classes), seed=config.train.seed)
        if probed:
            echo(f"head initialised by a linear probe on the frozen features (train accuracy "
                 f"{probed['probe_train_accuracy']:.3f}, {probed['probe_seconds']:.0f} s)")
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return apply_lora(model, config.lora, task.head, task.lora_modules_to_save(),
                      quantized=config.model.load_in_4bit or config.model.load_in_8bit,
                      gradient_checkpointing=bool(config.train.gradient_checkpointing))


def make_trainer(config: RunConfig, task, model, tokenizer, args, train_examples, eval_examples=(),
                 callbacks: Sequence = (), trainer_class=None):
    """The run's TunelabTrainer (`trainer_class`: a subclass of it, e.g. one that observes a step)."""
    from tunelab.training.trainer import TunelabTrainer

    return (trainer_class or TunelabTrainer)(
        model=model, args=args, data_collator=task.collate(tokenizer),
        train_dataset=train_examples, eval_dataset=eval_examples or None,
        processing_class=tokenizer, compute_metrics=task.trainer_metrics(), callbacks=list(callbacks),
        matmul_precision=config.model.matmul_precision, cpu_threads=config.train.cpu_threads,
        head_logits=getattr(task, "head_logits", None), label_smoothing=config.train.label_smoothing)


def _save_final(trainer, tokenizer, run: RunDir) -> None:
    """final/: every process calls save_model (FSDP and DeepSpeed ZeRO-3 gather the weights collectively); the
    main process writes it into a staging folder and renames it into place whole."""
    staging = run.path / ".saving-final"  # a tunelab leftover name (rundir), so a crash here stays recoverable
    main = is_main_process()
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    if main:
        tokenizer.save_pretrained(str(staging))
        replace_path(staging, run.final)
    trainer.accelerator.wait_for_everyone()


# -- section 1 helpers: resuming, failures ----------------------------------------------------------------
RESUME_CHANGEABLE = ("train.max_steps", "train.epochs")
"""What a resumed run may change: its length. Everything else stays as the run started."""
_RECIPE_SET = ("train.output_dir", "model.predict_dtype", "model.pooling")  # written by the recipe itself, never compared


def _resume_plan(run: RunDir, given: RunConfig, echo) -> tuple[RunConfig, Path | None]:
    """(the config to continue, the checkpoint to resume from); checkpoint None: the run already finished."""
    stored = load_config(run.config)
    config, changed = _with_resume_overrides(stored, given, echo)
    checkpoint = run.last_complete_checkpoint()
    done = checkpoint_step(checkpoint) if checkpoint is not None else None
    for step, folder in run.checkpoint_dirs():
        if done is None or step > done:  # torn by a crash while saving: never resumed from, removed
            echo(f"ignoring {folder.name}: {checkpoint_problem(folder)}; removing it")
            if is_main_process():
                shutil.rmtree(folder, ignore_errors=True)
    finished_steps = run.read_metrics().get("train_steps") if run.is_finished() else None
    new_max = config.train.max_steps
    if finished_steps is not None and (not changed or (new_max is not None and new_max <= finished_steps)):
        echo(f"{run.path} already finished ({finished_steps} steps; final model in {run.final}): nothing to do. "
             "To train longer, resume with a larger --max-steps or --epochs.")
        return config, None
    if checkpoint is None:
        raise UserError(f"--resume: {run.path} has no complete checkpoint to continue from; run the same command "
                        "without --resume to start it again (no --overwrite needed)")
    missing = missing_optimizer_state(checkpoint)
    if missing:
        echo(f"warning: {checkpoint.name} has no {' / '.join(missing)}: the optimizer state and learning-rate "
             "schedule (warmup included) restart from scratch; the weights and step count continue")
    echo(f"resuming {run.path} from {checkpoint.name} (step {done})")
    return config, checkpoint


def _with_resume_overrides(stored: RunConfig, given: RunConfig, echo) -> tuple[RunConfig, list[str]]:
    """The stored config with the given run length applied; every other difference is named as ignored."""
    before, now = _flat(stored.model_dump(mode="json")), _flat(given.model_dump(mode="json"))
    differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k) and k not in _RECIPE_SET)
    applied = [k for k in differ if k in RESUME_CHANGEABLE]
    ignored = [k for k in differ if k not in RESUME_CHANGEABLE]
    if applied:
        updates = {k.split(".", 1)[1]: now.get(k) for k in applied}
        stored = stored.model_copy(update={"train": stored.train.model_copy(update=updates)})
        echo("--resume: " + ", ".join(f"{k} = {now.get(k)} (was {before.get(k)})" for k in applied))
        if "train.epochs" in applied and stored.train.max_steps:
            echo(f"warning: train.epochs has no effect while train.max_steps ({stored.train.max_steps}) sets the "
                 "run's length; change --max-steps instead")
    if ignored:
        shown = ", ".join(f"{k} (run: {_short(before.get(k))}, given: {_short(now.get(k))})" for k in ignored[:8])
        more = f" and {len(ignored) - 8} more" if len(ignored) > 8 else ""
        echo(f"warning: --resume continues the run's stored config; ignored: {shown}{more}. Only "
             f"{' / '.join(RESUME_CHANGEABLE)} may change on a resume; start a new run to change the others")
    return stored, applied


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _train_or_restore(trainer, run: RunDir, checkpoint: Path | None, echo):
    """trainer.train(), resuming from `checkpoint`. A checkpoint already at the end of training is never trained
    past: a finished run returns None ("already finished"), one that stopped while writing its final model
    is restored so the recipe writes it."""
    if checkpoint is not None:
        planned = trainer.planned_steps()
        if planned is not None and checkpoint_step(checkpoint) >= planned:
            if run.is_finished():
                echo(f"{run.path} already finished ({checkpoint_step(checkpoint)} steps, the new length is "
                     f"{planned}): nothing to do")
                return None
            echo(f"all {planned} steps were trained before the interruption; writing the final model from "
                 f"{checkpoint.name}")
            return trainer.finished_output(checkpoint)
    return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)


def _after_failure(run: RunDir, resume: bool, exc: BaseException, main: bool) -> BaseException:
    """What to raise after a run stopped early. A new run with no checkpoint is removed, so the same command
    starts it again (a run it was replacing is put back); an interruption says whether --resume can continue;
    a full disk or an unwritable folder is one clear error. Anything else is re-raised as it is."""
    import errno

    last = run.last_complete_checkpoint() if run.path.is_dir() else None
    removed = False
    if not resume and last is None and main:
        try:
            removed = run.abandon()
        except OSError:
            pass
    where = f" --output-dir {run.path}"
    if isinstance(exc, KeyboardInterrupt):
        name = getattr(exc, "signal_name", "SIGINT")
        if last is not None:
            return Interrupted(name, f"interrupted ({name}); {last.name} is saved: continue with "
                                     f"`tunelab train ... --resume{where}`")
        what = "; removed what it wrote" if removed else ""
        return Interrupted(name, f"interrupted ({name}) before the first checkpoint, nothing to resume{what}; "
                                 "run the same command again to start over")
    if isinstance(exc, UserError):
        return exc
    if disk_full(exc):
        target = getattr(exc, "filename", None) or run.path
        kept = (f"the last good checkpoint ({last.name}) is kept; free some space and continue with --resume{where}"
                if last is not None else "no checkpoint was saved yet; free some space and run it again")
        return UserError(f"disk full while writing {target}; {kept}")
    if isinstance(exc, OSError) and exc.errno == errno.EROFS and exc.filename:
        return UserError(f"cannot write {exc.filename}: read-only file system")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM) and exc.filename:
        return UserError(f"permission denied: {exc.filename}")
    return exc


# -- section 5 helpers: the time estimate before training ---------------------------------------------------
def _estimate_before_training(trainer, train_examples, checkpoint, measured_steps: int, echo) -> None:
    """Print how long training should take before its first step: one batch of real rows timed now, scaled
    by the tokens of the steps still to run. `TimeEstimateCallback` refines it from the first real steps."""
    planned = trainer.planned_steps()
    remaining = (planned or 0) - (checkpoint_step(checkpoint) if checkpoint is not None else 0)
    if remaining <= 0:
        return  # already trained to its length (the recipe says so) or unknown: nothing to estimate
    per_token = seconds_per_token(trainer, train_examples)
    if per_token is None:
        return
    args = trainer.args
    total = per_token * planned_tokens(train_examples, remaining,
                                       args.per_device_train_batch_size * args.gradient_accumulation_steps)
    refined = f"; refined after {measured_steps} steps" if remaining > measured_steps else ""
    echo(f"estimated training time: {duration(total)} for {remaining} steps (a batch timed before training{refined})")


def _maybe_compile_blocks(config: RunConfig, trainer, echo) -> None:
    """`train.compile_blocks`: regional compilation of the model's repeated blocks (training/compile.py)."""
    if not config.train.compile_blocks:
        return
    from tunelab.training.compile import compile_repeated_blocks

    blocks = compile_repeated_blocks(trainer.model)
    echo(f"train.compile_blocks: compiling {blocks} repeated blocks with torch.compile; the first steps include the "
         "compilation" if blocks else "train.compile_blocks: no repeated blocks found in this model; it runs uncompiled")
