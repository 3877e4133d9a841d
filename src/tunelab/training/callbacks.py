"""Trainer callbacks that write the run directory's logs (history, time estimate, plots) and stop a run
cleanly on Ctrl-C / SIGTERM (`StopOnSignal`)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

from transformers import TrainerCallback

from tunelab.io import append_jsonl, atomic_write_text
from tunelab.training.rundir import RunDir


class HistoryCallback(TrainerCallback):
    """Append every log event (train loss, eval metrics) to history.jsonl as one flat JSON object. Events
    logged after training ended (the final evaluation of the kept model) carry `"after_training": true`, so
    each training step appears once per kind of event."""

    def __init__(self, run: RunDir, resume_step: int | None = None, saved_at: float | None = None):
        self.run = run
        self.resume_step = resume_step
        self.saved_at = saved_at

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume_step is None or not state.is_world_process_zero:
            return
        # Entries logged after the checkpoint we resume from will be logged again: drop them. `saved_at`
        # (when the checkpoint was written) also drops what was logged at its step after it, e.g. the
        # end-of-training summary of a run that is now extended.
        kept = [r for r in self.run.read_history() if r.get("step", 0) <= self.resume_step
                and (self.saved_at is None or r.get("time", 0) <= self.saved_at)]
        atomic_write_text(self.run.history, "".join(_json_line(r) for r in kept))
        self.resume_step = None

    def on_train_end(self, args, state, control, **kwargs):
        self._after_training = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": round(time.time(), 3)}
        record.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str))})
        if getattr(self, "_after_training", False):
            record["after_training"] = True
        record.update(memory_snapshot())
        append_jsonl(self.run.history, record)


class ProgressCallback(TrainerCallback):
    """One compact line per log event while training runs (replaces transformers' raw dict printer). The
    evaluations before and after training are printed once by the recipe (its before line and summary)."""

    def __init__(self, echo):
        self.echo = echo
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not self.training:
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
    """Time the first few real optimizer steps and print the projected rest, refining the estimate the recipe
    printed before training; nothing when no step is left to estimate."""

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
            if remaining:
                self.report(per_step, remaining)


class LearningWatch(TrainerCallback):
    """Says during training, at the evaluation that shows it, when a classifier's held-out predictions
    collapsed to one or two classes, or when after an epoch it still does not beat the class prior's log
    loss. Reads `eval_distinct_top1` / `eval_prior_log_loss` from the task's trainer metrics; the end-of-run
    review (tasks/review.py) repeats it in the summary and in metrics.json."""

    def __init__(self, echo, n_classes: int, likely_causes: str):
        self.echo = echo
        self.n_classes = n_classes
        self.likely_causes = likely_causes

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or state.global_step == 0:
            return
        distinct = metrics.get("eval_distinct_top1")
        if distinct is not None and (distinct <= 1 or (self.n_classes > 3 and distinct <= 2)):
            self.echo(f"warning (step {state.global_step}): the model collapsed: its held-out predictions take only "
                      f"{int(distinct)} of {self.n_classes} classes; {self.likely_causes}")
        loss, prior = metrics.get("eval_log_loss"), metrics.get("eval_prior_log_loss")
        if (state.epoch or 0) >= 1 - 1e-6 and loss is not None and prior is not None and loss >= prior - 1e-3:
            self.echo(f"warning (step {state.global_step}, epoch {state.epoch:.1f}): the model does not beat the class "
                      f"prior yet: held-out log loss {loss:.4f} vs prior {prior:.4f}; {self.likely_causes}")


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that says which signal (SIGINT or SIGTERM) and, once the run dir is checked, what
    can be done with the run (the message)."""

    def __init__(self, signal_name: str = "SIGINT", message: str | None = None):
        super().__init__(message or f"interrupted ({signal_name})")
        self.signal_name = signal_name


class StopOnSignal(TrainerCallback):
    """Ctrl-C (SIGINT) or SIGTERM while the Trainer trains: finish the current optimizer step, save a checkpoint,
    stop (`received` says which signal; `trainer.stop_reason` is set so no checkpoint is rotated away).
    A second signal, or one outside the training loop, interrupts at once (`Interrupted`).
    Only in the main thread of a single-process run: under torchrun the ranks could stop at different steps."""

    def __init__(self, trainer=None):
        self.trainer = trainer
        self.received: str | None = None
        self._training = False

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._handle)
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        graceful = self._training and int(os.environ.get("WORLD_SIZE", "1")) <= 1
        if graceful and self.received is None:
            self.received = name
            _say(f"\n{name}: stopping after this step and saving a checkpoint (Ctrl-C again stops at once)\n")
            return
        raise Interrupted(name)

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
            if self.trainer is not None:
                self.trainer.stop_reason = self.received

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False


def _say(text: str) -> None:
    """Write from a signal handler: one unbuffered write (print could re-enter a buffered stream)."""
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (OSError, ValueError, AttributeError):
        pass


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


def loss_curves(history: list[dict], smoothing: float = 0.6) -> dict[str, list[tuple[float, float]]]:
    """(step, value) series for the loss plot: raw train loss, its exponential moving average (bias-corrected,
    as TensorBoard smooths), and eval loss from step 0 (before training) through every evaluation."""
    train = [(r["step"], r["loss"]) for r in history if "loss" in r and not r.get("after_training")]
    smoothed, average = [], 0.0
    for i, (step, value) in enumerate(train, 1):
        average = smoothing * average + (1 - smoothing) * value
        smoothed.append((step, average / (1 - smoothing**i)))
    evals = [(0, r["eval_before_loss"]) for r in history if "eval_before_loss" in r][:1]
    evals += sorted({r["step"]: r["eval_loss"] for r in history if "eval_loss" in r}.items())
    return {"train": train, "train_smoothed": smoothed, "eval": evals}


def plot_history(run: RunDir) -> None:
    """plots/loss.png: train loss (raw and smoothed) per logging step, eval loss from step 0 on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunelab.io import atomic_path

    curves = loss_curves(run.read_history())
    fig, ax = plt.subplots(figsize=(7, 4))
    if curves["train"]:
        ax.plot(*zip(*curves["train"]), label="train loss", color="#4c72b0", alpha=0.35, marker=".")
        ax.plot(*zip(*curves["train_smoothed"]), label="train loss (smoothed)", color="#4c72b0")
    if curves["eval"]:
        ax.plot(*zip(*curves["eval"]), label="eval loss", color="#c44e52", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run.path.name)
    ax.grid(alpha=0.3)
    ax.legend()
    run.plots.mkdir(parents=True, exist_ok=True)
    with atomic_path(run.plots / "loss.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
