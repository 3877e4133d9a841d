"""Map tunelab's config to transformers' TrainingArguments (one place, so the recipe stays readable)."""
from __future__ import annotations

import math

import torch
from transformers import TrainingArguments

from tunelab.config import RunConfig
from tunelab.errors import UserError
from tunelab.models.hardware import Hardware
from tunelab.tasks.base import Task
from tunelab.training.rundir import RunDir


def training_arguments(config: RunConfig, run: RunDir, hardware: Hardware, task: Task,
                       n_train: int, has_eval: bool) -> TrainingArguments:
    t = config.train
    world = max(torch.cuda.device_count(), 1) if hardware.is_cuda else 1
    steps_per_epoch = math.ceil(n_train / (t.batch_size * t.gradient_accumulation_steps * world))
    total_steps = t.max_steps or math.ceil(steps_per_epoch * t.epochs)
    if t.use_liger_kernel and not hardware.is_cuda:
        raise UserError("train.use_liger_kernel needs a CUDA GPU; none is visible on this machine")
    use_liger = t.use_liger_kernel if t.use_liger_kernel is not None else (hardware.is_cuda and _installed("liger_kernel"))
    # Evaluate and save on the same schedule so the best checkpoint can be kept.
    if t.eval_steps:
        strategy, every = "steps", t.eval_steps
    elif t.save_steps:
        strategy, every = "steps", t.save_steps
    else:
        strategy, every = "epoch", None
    metric, greater = task.metric_for_best_model()
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        num_train_epochs=t.epochs or 1,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=math.ceil(total_steps * (t.warmup_ratio or 0.0)),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=hardware.dtype == torch.bfloat16,
        fp16=hardware.dtype == torch.float16,
        use_cpu=hardware.device == "cpu",
        neftune_noise_alpha=t.neftune_alpha,
        use_liger_kernel=use_liger,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=strategy if has_eval else "no",
        eval_steps=every if has_eval else None,
        save_strategy=strategy,
        save_steps=every,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model=metric if has_eval else None,
        greater_is_better=greater if has_eval else None,
        report_to="none",
        seed=t.seed,
        data_seed=t.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
