"""Competition submission files: writers that refuse to write an invalid file, and a checker for any file.

Formats:
- `arena`: `id,winner_model_a,winner_model_b,winner_tie`; three probabilities per row that sum to 1;
- `map`:   `row_id,Category:Misconception`; one to three space-separated labels per row.
Checks: the exact columns, no missing/duplicate ids, no NaN, probabilities in [0, 1] summing to 1
within 1e-6, and (when the test file is given) exactly the test's ids.

Arena files never hold an exact 0: one tie in the test data would make the log loss infinite. A 2-way
model (trained without ties) gets `winner_tie` = `tie_probability` (default TIE_PROBABILITY = 0.001) with
a and b scaled by (1 - tie_probability); every written probability is at least MIN_PROBABILITY (1e-9),
rows renormalised. A tie then costs -ln(0.001) = 6.9 nats instead of infinity, and a row without a tie
loses -ln(0.999) = 0.001 nats.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from tunelab.errors import UserError

SUM_TOLERANCE = 1e-6
TIE_PROBABILITY = 1e-3
MIN_PROBABILITY = 1e-9


@dataclass(frozen=True)
class SubmissionFormat:
    name: str
    id_column: str
    columns: tuple[str, ...]


FORMATS = {
    "arena": SubmissionFormat("arena", "id", ("id", "winner_model_a", "winner_model_b", "winner_tie")),
    "map": SubmissionFormat("map", "row_id", ("row_id", "Category:Misconception")),
}
MAP_MAX_LABELS = 3


@dataclass
class CheckResult:
    path: str
    format: str
    rows: int

    def summary(self) -> str:
        return f"{self.path}: valid {self.format} submission, {self.rows} rows"


def _format(name: str) -> SubmissionFormat:
    if name not in FORMATS:
        raise UserError(f"unknown submission format `{name}`; use one of {', '.join(FORMATS)}")
    return FORMATS[name]


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"submission file not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty (expected a CSV header and rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None


def check_frame(frame: pd.DataFrame, fmt: str, source: str, expected_ids: Iterable | None = None) -> CheckResult:
    """Raise a UserError naming the first problem (file, row, column); return a summary when valid."""
    spec = _format(fmt)
    columns = [str(c) for c in frame.columns]
    missing = [c for c in spec.columns if c not in columns]
    if missing:
        raise UserError(f"{source}: missing column `{missing[0]}`; the {fmt} submission format has the columns "
                        f"{','.join(spec.columns)} (found {','.join(columns) or 'none'})")
    extra = [c for c in columns if c not in spec.columns]
    if extra:
        raise UserError(f"{source}: unexpected column `{extra[0]}`; the {fmt} submission format has exactly the columns {','.join(spec.columns)}")
    if frame.empty:
        raise UserError(f"{source}: no rows")
    ids = frame[spec.id_column].astype(str).str.strip()
    blank = ids == ""
    if blank.any():
        raise UserError(f"{source}: row {int(np.argmax(blank.to_numpy())) + 1} has an empty `{spec.id_column}`")
    dup = ids.duplicated()
    if dup.any():
        row = int(np.argmax(dup.to_numpy()))
        raise UserError(f"{source}: row {row + 1}: duplicate {spec.id_column} `{ids.iloc[row]}`")
    if fmt == "arena":
        _check_probabilities(frame, list(spec.columns[1:]), source)
    else:
        _check_label_lists(frame, spec.columns[1], source)
    if expected_ids is not None:
        expected = [str(i).strip() for i in expected_ids]
        missing_ids = sorted(set(expected) - set(ids))
        if missing_ids:
            raise UserError(f"{source}: {len(missing_ids)} test {spec.id_column}s have no prediction, e.g. `{missing_ids[0]}`")
        unknown_ids = sorted(set(ids) - set(expected))
        if unknown_ids:
            raise UserError(f"{source}: {len(unknown_ids)} {spec.id_column}s are not in the test data, e.g. `{unknown_ids[0]}`")
    return CheckResult(source, fmt, len(frame))


def _check_probabilities(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    values = np.full((len(frame), len(columns)), np.nan)
    for j, col in enumerate(columns):
        numbers = pd.to_numeric(frame[col].astype(str).str.strip(), errors="coerce")
        bad = numbers.isna() | ~np.isfinite(numbers.fillna(0))
        if bad.any():
            row = int(np.argmax(bad.to_numpy()))
            raise UserError(f"{source}: row {row + 1}, column `{col}`: `{frame[col].iloc[row]}` is not a finite number (NaN/empty/text)")
        values[:, j] = numbers.to_numpy(dtype=np.float64)
    out_of_range = (values < 0) | (values > 1)
    if out_of_range.any():
        row, j = map(int, np.argwhere(out_of_range)[0])
        raise UserError(f"{source}: row {row + 1}, column `{columns[j]}`: probability {values[row, j]} is outside [0, 1]")
    sums = values.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        row = int(np.argmax(off))
        raise UserError(f"{source}: row {row + 1}: probabilities sum to {sums[row]:.9g}, not 1 (tolerance {SUM_TOLERANCE:g}); "
                        f"{off.sum()} rows are off")


def _check_label_lists(frame: pd.DataFrame, column: str, source: str) -> None:
    for row, value in enumerate(frame[column].astype(str)):
        labels = value.split()
        if not labels or value.strip().lower() == "nan":
            raise UserError(f"{source}: row {row + 1}: empty `{column}` (need 1 to {MAP_MAX_LABELS} labels)")
        if len(labels) > MAP_MAX_LABELS:
            raise UserError(f"{source}: row {row + 1}: {len(labels)} labels in `{column}`; at most {MAP_MAX_LABELS} count")
        if len(set(labels)) != len(labels):
            raise UserError(f"{source}: row {row + 1}: the same label is listed twice in `{column}` ({value})")


def check_submission(path: str | Path, fmt: str, expected_ids: Iterable | None = None) -> CheckResult:
    path = Path(path)
    return check_frame(_read(path), fmt, str(path), expected_ids)


def _write_checked(frame: pd.DataFrame, path: str | Path, fmt: str, float_format: str | None = None) -> Path:
    """Write to a temporary file, check that file, then move it into place: an invalid submission never lands."""
    from tunelab.io import atomic_path

    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format=float_format)
        check_frame(_read(tmp), fmt, str(path))
    return Path(path)


def with_tie(probs: np.ndarray, tie_probability: float = TIE_PROBABILITY) -> np.ndarray:
    """(n, 2) a/b probabilities of a model trained without ties -> (n, 3): tie = `tie_probability`, a and b
    scaled by (1 - tie_probability), so rows still sum to 1 and a tie in the data has a finite log loss."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    return np.column_stack([probs * (1.0 - tie_probability), np.full(len(probs), tie_probability)])


def write_arena_submission(ids: Sequence, probs: np.ndarray, path: str | Path,
                           tie_probability: float = TIE_PROBABILITY) -> Path:
    """probs: (n, 3) in order a, b, tie, or (n, 2) from a model without ties (tie = `tie_probability`, see
    `with_tie`); every probability floored at MIN_PROBABILITY and rows renormalised in float64."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] not in (2, 3) or len(probs) != len(ids):
        raise ValueError(f"arena submission needs (n, 2|3) probabilities for {len(ids)} ids, got {probs.shape}")
    if not np.isfinite(probs).all():
        raise UserError("cannot write the arena submission: the predictions contain NaN/inf probabilities")
    if probs.shape[1] == 2:
        probs = with_tie(probs, tie_probability)
    probs = probs / probs.sum(axis=1, keepdims=True)
    probs = np.maximum(probs, MIN_PROBABILITY)
    probs = probs / probs.sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"id": list(ids), "winner_model_a": probs[:, 0], "winner_model_b": probs[:, 1],
                          "winner_tie": probs[:, 2]})
    return _write_checked(frame, path, "arena", float_format="%.10f")


def check_map_label(label: str, why: str = "cannot write a MAP submission") -> None:
    """A MAP label must be non-empty and free of whitespace (the format separates labels by spaces)."""
    label = str(label)
    if not label.strip():
        raise UserError(f"{why}: a label is empty")
    if any(ch.isspace() for ch in label):
        raise UserError(f"{why}: label `{label}` contains a space, and MAP submissions separate labels by "
                        f"spaces; rename it (e.g. `{'_'.join(label.split())}`) or write --format csv")


def write_map_submission(ids: Sequence, top_labels: Sequence[Sequence[str]], path: str | Path) -> Path:
    """One row per id with its (up to three) labels, best first, as lists: a label with a space is refused
    (`check_map_label`), never split into two labels."""
    top_labels = [[labels] if isinstance(labels, str) else list(labels) for labels in top_labels]
    for labels in top_labels:
        for label in labels:
            check_map_label(label)
    frame = pd.DataFrame({"row_id": list(ids),
                          "Category:Misconception": [" ".join(list(labels)[:MAP_MAX_LABELS]) for labels in top_labels]})
    return _write_checked(frame, path, "map")
