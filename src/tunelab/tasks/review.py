"""The end-of-training review of a classifier (classify, preference), run by the training recipe:

1. calibration: one temperature T fitted on the held-out rows (minimising their log loss), kept in the
   task state so `predict_proba` applies it at predict time (`task.calibrate`, default on; skipped with
   fewer than MIN_CALIBRATION_ROWS labelled rows). The ranking of classes does not change, so accuracy
   and MAP@k do not either; metrics.json keeps `log_loss_uncalibrated` and `temperature`.
2. the classical baseline (tasks/baseline.py), fitted on exactly the training split, scored on the same
   held-out rows (`baseline_<metric>` keys) and saved in the run dir (`task.baseline`, default on);
3. loud warnings (printed and kept in metrics.json under `warnings`) when the held-out predictions are
   (nearly) constant, or the model does not beat the class prior (`prior_*`) or the baseline.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from tunelab.tasks.base import SequenceClassificationTask

MIN_CALIBRATION_ROWS = 30
LOWER_IS_BETTER = ("log_loss",)
LIKELY_CAUSES = ("likely causes: a learning rate too high (diverged) or too low for a fresh head "
                 "(train.learning_rate), too few steps (train.epochs / train.max_steps), or inputs truncated "
                 "before the informative part (train.max_length; see `tunelab data lengths`)")


def review_classifier(task: "SequenceClassificationTask", model, tokenizer, train: pd.DataFrame,
                      held_out: pd.DataFrame, run_dir: Path | None) -> tuple[dict[str, Any], pd.DataFrame | None, list[str]]:
    metrics: dict[str, Any] = {}
    lines: list[str] = []
    predictions, probs = None, None
    labelled = not held_out.empty and task.has_labels(held_out)
    if labelled:
        raw = task.raw_proba(model, tokenizer, held_out)
        lines += calibrate(task, held_out, raw, metrics)
        from tunelab.metrics.classification import apply_temperature

        probs = apply_temperature(raw, task.temperature)
        metrics.update(task.score_probabilities(held_out, probs))
        predictions = task.predictions_frame(held_out, probs)
    if getattr(task.options, "baseline", True):
        lines += fit_baseline(task, train, held_out if labelled else None, run_dir, metrics)
    if labelled:
        lines += comparison_table(task, metrics)
    metrics["warnings"] = collapse_warnings(task, held_out, probs, metrics) if labelled else []
    lines += [f"WARNING: {w}" for w in metrics["warnings"]]
    return metrics, predictions, lines


def calibrate(task, held_out: pd.DataFrame, raw: np.ndarray, metrics: dict) -> list[str]:
    from tunelab.metrics.classification import apply_temperature, fit_temperature, log_loss

    task.temperature = 1.0
    if not getattr(task.options, "calibrate", True):
        return []
    ids, known = task.label_ids(held_out)
    if known.sum() < MIN_CALIBRATION_ROWS:
        return [f"calibration: skipped ({int(known.sum())} labelled held-out rows; temperature scaling needs "
                f"{MIN_CALIBRATION_ROWS})"]
    y, p = ids[known], raw[known]
    task.temperature = fit_temperature(y, p)
    before, after = log_loss(y, p), log_loss(y, apply_temperature(p, task.temperature))
    metrics.update(temperature=round(task.temperature, 6), log_loss_uncalibrated=before)
    if task.temperature == 1.0:
        return [f"calibration: temperature stays 1 (no temperature lowers the log loss {before:.4f} of {len(y)} "
                "held-out rows by more than noise)"]
    return [f"calibration: temperature {task.temperature:.3f} fitted on {len(y)} held-out rows; "
            f"log loss {before:.4f} -> {after:.4f} (saved with the run, applied at predict time)"]


def fit_baseline(task, train: pd.DataFrame, held_out: pd.DataFrame | None, run_dir: Path | None,
                 metrics: dict) -> list[str]:
    from tunelab.tasks.baseline import BASELINE_FILE, TfidfBaseline

    started = time.perf_counter()
    ids, known = task.label_ids(train)
    baseline = TfidfBaseline(kind=task.baseline_kind, n_classes=len(task.classes))
    baseline.fit(_take(task.baseline_inputs(train), known), ids[known])
    if run_dir is not None:
        baseline.save(Path(run_dir) / BASELINE_FILE)
    seconds = time.perf_counter() - started
    metrics["baseline_train_rows"] = int(known.sum())
    if held_out is None:
        return [f"baseline (TF-IDF + logistic regression): fitted on {int(known.sum())} rows in {seconds:.0f} s"]
    eval_ids, eval_known = task.label_ids(held_out)
    probs = baseline.predict_proba(task.baseline_inputs(held_out))
    scores = task.metrics_from_probs(eval_ids[eval_known], probs[eval_known])
    metrics.update({f"baseline_{k}": v for k, v in scores.items()})
    return [f"baseline (TF-IDF + logistic regression): fitted on {int(known.sum())} training rows in {seconds:.0f} s"]


def _take(inputs, mask: np.ndarray):
    if isinstance(inputs, tuple):
        return tuple(_take(part, mask) for part in inputs)
    return [x for x, keep in zip(inputs, mask) if keep]


def main_metric(task) -> str:
    return task.metric_for_best_model()[0]


def comparison_table(task, metrics: dict) -> list[str]:
    names = [k for k in metrics if f"baseline_{k}" in metrics or f"prior_{k}" in metrics]
    if not names:
        return []
    fmt = lambda v: f"{v:>9.4f}" if isinstance(v, (int, float)) else f"{'-':>9}"
    lines = [f"held-out {'metric':<12}{'model':>9}{'baseline':>9}{'prior':>9}"]
    for k in names:
        lines.append(f"         {k:<12}{fmt(metrics[k])}{fmt(metrics.get(f'baseline_{k}'))}{fmt(metrics.get(f'prior_{k}'))}")
    return lines


def _worse(metric: str, model: float, other: float, tie_counts: bool = True) -> bool:
    """True when `model` is worse than `other` on `metric` (or equal, if `tie_counts`)."""
    if not (np.isfinite(model) and np.isfinite(other)):
        return False
    if model == other:
        return tie_counts
    return model > other if metric in LOWER_IS_BETTER else model < other


def collapse_warnings(task, held_out: pd.DataFrame, probs: np.ndarray, metrics: dict) -> list[str]:
    """Warnings about a model that learned little: (nearly) constant predictions, or no better than the
    class prior or the TF-IDF baseline on the task's main metric (and log loss for the prior)."""
    from tunelab.metrics.classification import prediction_spread

    warnings: list[str] = []
    ids, known = task.label_ids(held_out)
    n_rows, n_classes = int(known.sum()), len(task.classes)
    if n_rows == 0:
        return warnings
    k = getattr(task.options, "top_k", 1)
    spread = prediction_spread(probs[known], k)
    true_classes = len(np.unique(ids[known]))
    if n_classes > 3 and spread["distinct_top1"] <= 2 < true_classes:
        warnings.append(f"the model collapsed: only {spread['distinct_top1']} distinct top-1 label(s) over {n_rows} "
                        f"held-out rows that hold {true_classes} classes; {LIKELY_CAUSES}")
    elif n_classes > 3 and k > 1 and spread["top_k_mode_share"] >= 0.9 and true_classes > k:
        warnings.append(f"the model's top-{k} lists barely vary: {spread['top_k_mode_share']:.0%} of {n_rows} held-out "
                        f"rows get the same list; {LIKELY_CAUSES}")
    elif n_rows >= 2 and spread["prob_std"] < 0.01:
        warnings.append(f"the model's predictions are nearly constant (probabilities vary by at most "
                        f"{spread['prob_std']:.4f} across {n_rows} held-out rows); {LIKELY_CAUSES}")
    main = main_metric(task)
    checks = dict.fromkeys([main, "log_loss"])
    lost = [m for m in checks if m in metrics and f"prior_{m}" in metrics and _worse(m, metrics[m], metrics[f"prior_{m}"])]
    if lost:
        warnings.append("the model does not beat the class prior (always predicting the training frequencies): "
                        + ", ".join(f"{m} {metrics[m]:.4f} vs prior {metrics[f'prior_{m}']:.4f}" for m in lost)
                        + f"; {LIKELY_CAUSES}")
    if f"baseline_{main}" in metrics and main in metrics and _worse(main, metrics[main], metrics[f"baseline_{main}"], False):
        warnings.append(f"the model does not beat the TF-IDF + logistic regression baseline: {main} "
                        f"{metrics[main]:.4f} vs baseline {metrics[f'baseline_{main}']:.4f}; train longer or with "
                        f"another learning rate, try a larger backbone, or ensemble with the baseline "
                        f"(`tunelab ensemble RUN baseline:RUN`)")
    return warnings
