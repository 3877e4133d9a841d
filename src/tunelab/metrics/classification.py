"""Classification metrics from class probabilities: accuracy, macro-F1, log loss, MAP@k.

MAP@k follows the Kaggle definition for one true label per row: a row scores
1/rank of the true label among the k best guesses (0 if absent), averaged
over rows. Ties in probability are broken by class index (stable sort), so the
result is deterministic.
"""
from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k most probable class indices, best first (stable on ties)."""
    probs = np.asarray(probs)
    k = min(k, probs.shape[1])
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def map_at_k(y_true: np.ndarray, probs: np.ndarray, k: int = 3) -> float:
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return float("nan")
    top = top_k_indices(probs, k)
    hits = top == y_true[:, None]
    ranks = np.argmax(hits, axis=1)
    scores = np.where(hits.any(axis=1), 1.0 / (ranks + 1), 0.0)
    return float(scores.mean())


def accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(y_true)))


def macro_f1(y_true: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true)
    # Average over the classes present in truth or prediction (sklearn's default), not over all head outputs.
    return float(f1_score(y_true, np.argmax(probs, axis=1), average="macro", zero_division=0))


def log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    from sklearn.metrics import log_loss as sk_log_loss

    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return float(sk_log_loss(np.asarray(y_true), probs, labels=list(range(probs.shape[1]))))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, k: int = 3) -> dict[str, float]:
    """The task metrics, keyed as the Trainer logs them (without `eval_`)."""
    y_true = np.asarray(y_true)
    return {
        "accuracy": accuracy(y_true, probs),
        "macro_f1": macro_f1(y_true, probs),
        "log_loss": log_loss(y_true, probs),
        f"map@{k}": map_at_k(y_true, probs, k),
    }


def majority_probs(train_labels: np.ndarray, n_classes: int, n_rows: int) -> np.ndarray:
    """The prior baseline: every row gets the training class frequencies (ranking = majority order)."""
    counts = np.bincount(np.asarray(train_labels), minlength=n_classes).astype(np.float64) + 1e-3
    return np.tile(counts / counts.sum(), (n_rows, 1))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
