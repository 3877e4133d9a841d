"""Map tunelab's config to transformers' TrainingArguments (one place, so the recipe stays readable)."""
from __future__ import annotations

import math
import os

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
    world = data_parallel_size(hardware)
    steps_per_epoch = math.ceil(n_train / (t.batch_size * t.gradient_accumulation_steps * world))
    total_steps = t.max_steps or math.ceil(steps_per_epoch * t.epochs)
    if t.use_liger_kernel and not hardware.is_cuda:
        raise UserError("train.use_liger_kernel needs a CUDA GPU; none is visible on this machine")
    use_liger = t.use_liger_kernel if t.use_liger_kernel is not None else (hardware.is_cuda and _installed("liger_kernel"))
    strategy, eval_every, save_every = _schedule(t.eval_steps, t.save_steps, has_eval, total_steps)
    metric, greater = task.metric_for_best_model()
    report_to = experiment_tracking(t.report_to, run)
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
        label_smoothing_factor=t.label_smoothing,  # generative tasks; classification heads smooth in TunelabTrainer
        bf16=hardware.dtype == torch.bfloat16,
        fp16=hardware.dtype == torch.float16,
        use_cpu=hardware.device == "cpu",
        neftune_noise_alpha=t.neftune_alpha,
        use_liger_kernel=use_liger,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy=strategy if has_eval else "no",
        eval_steps=eval_every if has_eval else None,
        save_strategy=strategy,
        save_steps=save_every,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model=metric if has_eval else None,
        greater_is_better=greater if has_eval else None,
        report_to=report_to,
        run_name=run.path.name,
        seed=t.seed,
        data_seed=t.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def data_parallel_size(hardware: Hardware) -> int:
    """Processes (or GPUs) that each take a batch per step: WORLD_SIZE under torchrun / accelerate launch (one
    process per device, any number of machines), else every visible GPU of one process (DataParallel)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        return world
    return max(torch.cuda.device_count(), 1) if hardware.is_cuda else 1


EVALS_PER_RUN = 4
"""Neither eval_steps nor save_steps set: evaluate (and checkpoint) about this often in a run of 8+ steps,
so the loss curve shows the eval loss during training, not only at the end (and a crash loses little)."""


def _schedule(eval_steps: int | None, save_steps: int | None, has_eval: bool,
              total_steps: int = 0) -> tuple[str, int | None, int | None]:
    """(strategy, eval every, save every). Each unset value follows the other; neither set: every
    total/EVALS_PER_RUN steps for runs of 8+ steps, else once per epoch.

    With eval data the best checkpoint is kept (`load_best_model_at_end`), which needs a save at an
    evaluated step: transformers requires save_steps to be a multiple of eval_steps. Conflicting
    values are the user's to resolve, never silently replaced.
    """
    if not eval_steps and not save_steps:
        if total_steps < 8:
            return "epoch", None, None
        every = math.ceil(total_steps / EVALS_PER_RUN)
        return "steps", every, every
    eval_every = eval_steps or save_steps
    save_every = save_steps or eval_steps
    if has_eval and save_every % eval_every:
        low = save_every // eval_every * eval_every
        options = " or ".join(f"save_steps: {n}" for n in (low, low + eval_every) if n > 0)
        raise UserError(f"train.save_steps ({save_every}) must be a multiple of train.eval_steps ({eval_every}): "
                        f"the best checkpoint is chosen among evaluated steps, so every save needs an evaluation. "
                        f"Use e.g. {options}, or eval_steps: {save_every}")
    return "steps", eval_every, save_every


TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "trackio": ("trackio", "trackio")}
"""train.report_to value -> (module that must import, pip package that provides it)."""


def experiment_tracking(report_to: str, run: RunDir) -> str:
    """The Trainer's `report_to` for train.report_to, its files pointed into the run dir; a UserError when the
    tracker's package is not installed."""
    import os

    if report_to == "none":
        return "none"
    module, package = TRACKERS[report_to]
    if not _installed(module) and not (report_to == "tensorboard" and _installed("tensorboardX")):
        raise UserError(f"train.report_to: {report_to} needs the `{package}` package, which is not installed: "
                        f"pip install {package} (or set train.report_to: none)")
    if report_to == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str((run.path / "tensorboard").resolve())
    elif report_to == "mlflow":
        given = os.environ.get("MLFLOW_TRACKING_URI")
        if given is None or given == _SET_BY_US.get("mlflow"):  # the user's own tracking server wins
            os.environ["MLFLOW_TRACKING_URI"] = _SET_BY_US["mlflow"] = (run.path / "mlruns").resolve().as_uri()
    return report_to


_SET_BY_US: dict[str, str] = {}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
