"""Token-length analysis of model inputs: percentiles, truncation share, histogram, advice."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tunelab.io import atomic_path

PERCENTILES = (50, 90, 95, 99)


def suggest_max_length(lengths: np.ndarray, quantile: float = 0.95, multiple: int = 32) -> int:
    """The length covering `quantile` of rows, rounded up to a multiple (friendlier to kernels)."""
    if len(lengths) == 0:
        return multiple
    return int(math.ceil(float(np.quantile(lengths, quantile)) / multiple) * multiple)


def length_report(lengths: list[int], max_length: int, png_path: str | Path | None) -> dict:
    """Percentiles, the share of rows longer than `max_length` (which get truncated), advice, and a histogram PNG.

    `lengths` are tokens per model input as training counts them (`Task.input_lengths`)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    over = lengths > max_length
    report: dict = {
        "rows": int(len(lengths)),
        "max_length": int(max_length),
        "mean": round(float(lengths.mean()), 1) if len(lengths) else 0.0,
        "min": int(lengths.min()) if len(lengths) else 0,
        "max": int(lengths.max()) if len(lengths) else 0,
        **{f"p{p}": float(np.percentile(lengths, p)) if len(lengths) else 0.0 for p in PERCENTILES},
        "truncated_rows": int(over.sum()),
        "truncated_share": round(float(over.mean()), 4) if len(lengths) else 0.0,
        "suggested_max_length": suggest_max_length(lengths),
    }
    report["advice"] = _advice(report)
    if png_path is not None and len(lengths):
        _histogram(lengths, max_length, Path(png_path))
        report["histogram"] = str(png_path)
    return report


def _advice(r: dict) -> str:
    share, suggested = r["truncated_share"], r["suggested_max_length"]
    if share > 0.05:
        return (f"{100 * share:.1f}% of rows are longer than max_length={r['max_length']} and lose their end; "
                f"consider max_length={suggested} (covers 95% of rows) or a template with fewer fields")
    if suggested < r["max_length"] / 2 and r["max_length"] > 64:
        return (f"95% of rows fit in {suggested} tokens: max_length={suggested} would truncate at most 5% of rows "
                "and make training cheaper")
    return f"max_length={r['max_length']} fits {100 * (1 - share):.1f}% of rows without truncation"


def _histogram(lengths: np.ndarray, max_length: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lengths, bins=min(60, max(10, len(np.unique(lengths)))), color="#4c72b0", alpha=0.85)
    ax.axvline(max_length, color="#c44e52", linestyle="--", label=f"max_length = {max_length}")
    p95 = float(np.percentile(lengths, 95))
    ax.axvline(p95, color="#55a868", linestyle=":", label=f"p95 = {p95:.0f}")
    ax.set_xlabel("tokens per input")
    ax.set_ylabel("rows")
    ax.set_title(f"token lengths ({len(lengths)} rows, {100 * float((lengths > max_length).mean()):.1f}% truncated)")
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
