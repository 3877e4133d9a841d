"""Trainer callbacks that write the run directory's logs: history, time estimate, plots."""
from __future__ import annotations

import time

from transformers import TrainerCallback

from tunelab.io import append_jsonl, atomic_write_text
from tunelab.training.rundir import RunDir


class HistoryCallback(TrainerCallback):
    """Append every log event (train loss, eval metrics) to history.jsonl as one flat JSON object."""

    def __init__(self, run: RunDir, resume_step: int | None = None):
        self.run = run
        if resume_step is not None:
            # Entries logged after the checkpoint we resume from will be logged again: drop them.
            kept = [r for r in run.read_history() if r.get("step", 0) <= resume_step]
            atomic_write_text(run.history, "".join(_json_line(r) for r in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": round(time.time(), 3)}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})
        record.update(memory_snapshot())
        append_jsonl(self.run.history, record)


class ProgressCallback(TrainerCallback):
    """One compact line per log event (replaces transformers' raw dict printer)."""

    def __init__(self, echo):
        self.echo = echo

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        shown = []
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
            if key in logs:
                shown.append(f"{key} {logs[key]:.4g}")
        shown += [f"{k} {v:.4f}" for k, v in logs.items() if k.startswith("eval_") and k != "eval_loss"
                  and isinstance(v, float) and not k.endswith(("runtime", "per_second", "preparation_time"))]
        if shown:
            self.echo(f"step {state.global_step}/{state.max_steps}  " + "  ".join(shown))


class TimeEstimateCallback(TrainerCallback):
    """Time the first few real optimizer steps and print the projected total before the run goes far."""

    def __init__(self, steps: int, report):
        self.steps = steps
        self.report = report
        self._start = None
        self._first = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._start is None:
            self._start = time.perf_counter()
            self._first = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.steps <= 0 or self._start is None:
            return
        done = state.global_step - self._first
        if done == self.steps:
            per_step = (time.perf_counter() - self._start) / done
            remaining = max(state.max_steps - state.global_step, 0)
            self.report(per_step, remaining)


def memory_snapshot() -> dict:
    """Peak process RSS (and CUDA peak allocation) so far, in GB: memory monitoring in every history row."""
    import torch

    from tunelab.models.hardware import peak_rss_bytes

    snap = {"peak_rss_gb": round(peak_rss_bytes() / 1024**3, 3)}
    if torch.cuda.is_available():
        snap["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    return snap


def _json_line(record: dict) -> str:
    import json

    return json.dumps(record, ensure_ascii=False) + "\n"


def plot_history(run: RunDir) -> None:
    """plots/loss.png: train loss per logging step and eval loss per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunelab.io import atomic_path

    history = run.read_history()
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run.path.name)
    ax.grid(alpha=0.3)
    ax.legend()
    run.plots.mkdir(parents=True, exist_ok=True)
    with atomic_path(run.plots / "loss.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
