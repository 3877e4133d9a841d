"""What a run tells its user besides the step lines: the time estimate before the first step, per-row eval losses
(eval_predictions.jsonl of a generative run that generates nothing), and the end-of-run summary."""
from __future__ import annotations

import math
import random
import time

import numpy as np
import pandas as pd
import torch

from tunelab.models.hardware import matmul_precision, peak_rss_bytes
from tunelab.models.threads import cpu_threads

# -- time estimate before training -------------------------------------------------------------------------
def seconds_per_token(trainer, examples: list[dict]) -> float | None:
    """Seconds one padded token of training costs, from a forward + backward pass over real training rows timed
    before training: the run's own model, batch, dtype and threads. One row goes through first, untimed, so lazy
    initialisation and first-call checks are not counted. Gradients are dropped and every random generator is
    put back, so the run trains exactly as without it. None when there is nothing to time."""
    if not examples:
        return None
    budget = getattr(trainer, "token_budget", None)
    rows = examples[: max(1, trainer.args.per_device_train_batch_size)]
    longest = max(len(e["input_ids"]) for e in rows)
    if budget:  # what one training micro-batch holds at most (trainer.py splits bigger batches)
        rows = rows[: max(1, budget // max(longest, 1))]
    model, device = trainer.model, trainer.args.device
    collate = trainer.data_collator

    def step(batch: list[dict]) -> int:
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(batch).items()}
        with trainer.accelerator.autocast():
            loss = trainer.compute_loss(model, inputs)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return int(inputs["input_ids"].numel())

    saved = _random_states()
    was_training = model.training
    try:
        with matmul_precision(getattr(trainer, "matmul_precision", None)), \
                cpu_threads(getattr(trainer, "cpu_threads", None)):
            model.train()
            step(rows[:1])
            started = time.perf_counter()
            tokens = step(rows)
            return (time.perf_counter() - started) / tokens
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        _restore_random_states(saved)


def planned_tokens(examples: list[dict], steps: int, rows_per_step: int) -> float:
    """Tokens `steps` optimizer steps go through: rows per step x the mean row length (length-bucketed
    batches pad little)."""
    mean = sum(len(e["input_ids"]) + len(e.get("input_ids_b", ())) for e in examples) / max(len(examples), 1)
    return steps * min(rows_per_step, len(examples)) * mean


def _random_states():
    return (random.getstate(), np.random.get_state(), torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _restore_random_states(states) -> None:
    python, numpy_state, cpu, cuda = states
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def duration(seconds: float) -> str:
    if seconds >= 90:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


# -- per-row eval losses ------------------------------------------------------------------------------------
LOSS_ROWS = 200
"""Held-out rows whose loss is written one by one when a generative run generates nothing after training."""


@torch.inference_mode()
def row_losses(trainer, task, frame: pd.DataFrame, tokenizer, max_length: int, limit: int = LOSS_ROWS) -> pd.DataFrame:
    """The final model's loss on each held-out row (mean over its answer tokens, as eval_loss), with the row's
    prompt and reference: eval_predictions.jsonl for a generative run whose task generated nothing after
    training (e.g. sft with `eval_max_rows: 0`). A row whose answer was truncated away has no loss (None)."""
    frame = frame.iloc[:limit]
    model = trainer.model
    model.eval()
    losses = []
    with matmul_precision(getattr(trainer, "matmul_precision", None)), \
            cpu_threads(getattr(trainer, "cpu_threads", None)):
        for i in range(len(frame)):
            examples = task.encode(frame.iloc[i : i + 1], tokenizer, max_length)
            each = [float(trainer.prediction_step(model, trainer.data_collator([e]), prediction_loss_only=True)[0])
                    for e in examples]
            losses.append(round(sum(each) / len(each), 4) if each else None)
    return pd.DataFrame({
        "prompt": [task.generation_prompt(row, tokenizer) for _, row in frame.iterrows()],
        "references": [task.references(row) for _, row in frame.iterrows()],
        "loss": losses,
    }, index=frame.index)


# -- end-of-run summary -----------------------------------------------------------------------------------
NOT_TASK_METRICS = ("prior_", "baseline_", "length_corr_", "log_loss_uncalibrated", "temperature", "generated_rows",
                    "generation_", "eval_rows_unknown_label")
"""Keys of a task's scores that describe the evaluation (comparisons, bookkeeping), not the model's quality."""


def task_metric_names(scores: dict, main_metric: str | None) -> list[str]:
    """The task's own metrics among `scores` (ROUGE, MAP@k, accuracy, log loss...), its main metric first."""
    names = [k for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
             and not k.startswith(NOT_TASK_METRICS)]
    return sorted(names, key=lambda k: k != main_metric)


def summary_lines(metrics: dict, scores: dict, main_metric: str | None, rows: int | None, predictions: str | None,
                  run_final: str, metrics_path: str) -> list[str]:
    """The end-of-run summary: steps, time, losses, the task's own metrics, peak memory, where things are."""
    loss = [f"train loss {metrics['train_loss']:.4f}"] if "train_loss" in metrics else []
    if "eval_loss" in metrics:
        before = metrics.get("eval_before_loss")
        loss.append(f"eval loss {metrics['eval_loss']:.4f}" + (f" (before {before:.4f})" if before is not None else ""))
    if "eval_perplexity" in metrics:
        loss.append(f"perplexity {metrics['eval_perplexity']:.4g}")
    head = (f"done: {metrics.get('train_steps', 0)} steps in {duration(metrics.get('train_runtime_s', 0.0))}   "
            + "   ".join(loss))
    lines = [head.rstrip()]
    names = task_metric_names(scores, main_metric)
    if names:
        where = f" on {rows} held-out rows" if rows else ""
        shown = "   ".join(f"{k} {_number(scores[k])}" for k in names)
        lines.append(f"task metrics{where}: {shown}")
    if predictions:
        lines.append(f"per-row predictions: {predictions}")
    lines.append(f"peak memory: {peak_memory()}")
    lines.append(f"saved: {run_final}   metrics: {metrics_path}")
    return lines


def peak_memory() -> str:
    text = f"{peak_rss_bytes() / 1024**3:.2f} GB RSS"
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        text += f", CUDA {torch.cuda.max_memory_allocated() / 1024**3:.2f} GB"
    return text


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if math.isfinite(value) else str(value)
