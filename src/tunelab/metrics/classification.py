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


def logits_of(eval_prediction) -> np.ndarray:
    """The logits array from a Trainer EvalPrediction (some models return a tuple)."""
    predictions = eval_prediction.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    return np.asarray(predictions)


# -- calibration -------------------------------------------------------------------------------------------
TEMPERATURE_BOUNDS = (0.1, 10.0)
MIN_TEMPERATURE_GAIN = 1e-3
"""A temperature is kept only if it lowers the mean log loss it is fitted on by at least
max(MIN_TEMPERATURE_GAIN, 1.92 / rows) nats: a likelihood-ratio test for one parameter (2 * rows * gain > 3.84,
p < 0.05). Fitted on pure noise, T gains ~0.5 / rows on average; sharpening the near-constant output of a
model that learned nothing (T -> 0) would otherwise "win" by chance."""


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of probabilities: softmax(log(p) / T). The log of a softmax differs from its
    logits by a constant per row, so this equals softmax(logits / T). T = 1 returns `probs` unchanged,
    T > 1 softens, T < 1 sharpens; the ranking of classes never changes."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0 or probs.size == 0:
        return probs
    return softmax(np.log(np.clip(probs, 1e-300, None)) / temperature)


def nll(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, unclipped (an exact 0 for the true class gives inf)."""
    probs = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(probs[np.arange(len(probs)), np.asarray(y_true)])))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The one scalar T minimising the log loss of `apply_temperature(probs, T)` (bounded search on log T);
    1.0 when the best T does not gain enough to be more than noise (see MIN_TEMPERATURE_GAIN)."""
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true)
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))

    def loss(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(z)), y_true]))

    result = minimize_scalar(loss, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-5})
    best = float(np.exp(result.x))
    needed = max(MIN_TEMPERATURE_GAIN, 1.92 / max(len(y_true), 1))
    return best if loss(np.log(best)) < loss(0.0) - needed else 1.0  # else leave the model alone


# -- collapse signals --------------------------------------------------------------------------------------
def prediction_spread(probs: np.ndarray, k: int = 3) -> dict[str, float]:
    """How much predictions vary across rows: distinct top-1 classes, the share of rows sharing the most
    common top-k list, and the largest per-class standard deviation of the probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return {"distinct_top1": 0, "top_k_mode_share": float("nan"), "prob_std": float("nan")}
    top = top_k_indices(probs, k)
    _, counts = np.unique(top, axis=0, return_counts=True)
    return {"distinct_top1": int(len(np.unique(top[:, 0]))), "top_k_mode_share": float(counts.max() / len(top)),
            "prob_std": float(probs.std(axis=0).max())}
