"""Dataset statistics for `tunelab data stats`: rows, columns, text lengths, category/difficulty counts,
and the detected encoding (with its confidence) when the frame came from `read_table`."""
from __future__ import annotations

import pandas as pd

from tunelab.data.validate import is_blank


def describe(frame: pd.DataFrame, max_categories: int = 15) -> dict:
    out: dict = {"rows": len(frame), "columns": {}}
    for column in frame.columns:
        series = frame[column]
        info: dict = {"empty": int(series.map(is_blank).sum())}
        if series.map(lambda v: isinstance(v, str)).all():
            lengths = series.str.len()
            info.update(chars_mean=round(float(lengths.mean()), 1), chars_median=float(lengths.median()),
                        chars_p95=float(lengths.quantile(0.95)), chars_max=int(lengths.max()),
                        unique=int(series.nunique()))
            if series.nunique() <= max(max_categories, len(frame) // 20) and series.nunique() < len(frame):
                info["counts"] = {str(k): int(v) for k, v in series.value_counts().head(max_categories).items()}
        out["columns"][str(column)] = info
    out["duplicate_rows"] = int(frame.astype(str).duplicated().sum())
    if frame.attrs.get("encoding"):  # set by read_table: how the file's text was decoded
        out["encoding"] = frame.attrs["encoding"]
        out["encoding_confidence"] = frame.attrs.get("encoding_confidence")
    return out
