"""Column mapping and the data-quality report.

Problems are counted and shown, never silently dropped: the report lists how
many rows were empty, duplicated or overlong, with example row numbers (1-based
data rows, as a spreadsheet shows them below the header).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from tunelab.errors import UserError, did_you_mean


def map_columns(frame: pd.DataFrame, mapping: dict[str, str], wanted: set[str], source: str) -> pd.DataFrame:
    """Rename the user's columns to the task's logical field names.

    Explicitly mapped columns must exist; unmapped fields are taken by their own name when present.
    """
    renames = {}
    for fld, column in mapping.items():
        if fld not in wanted:
            raise UserError(f"data.columns: unknown field `{fld}`{did_you_mean(fld, wanted)}; this task reads {', '.join(sorted(wanted))}")
        if column not in frame.columns:
            raise UserError(f"{source}: column `{column}` (mapped to `{fld}`) not found{did_you_mean(column, frame.columns)}; "
                            f"columns are: {', '.join(map(str, frame.columns))}")
        renames[column] = fld
    # A file column that merely shares a field's name must not clash with a mapped one.
    clashing = [c for c in frame.columns if c in set(renames.values()) and c not in renames]
    frame = frame.drop(columns=clashing).rename(columns=renames)
    return frame


def require_fields(frame: pd.DataFrame, any_of: tuple[tuple[str, ...], ...], source: str) -> tuple[str, ...]:
    """Return the first field group fully present, else a UserError naming what is missing."""
    for group in any_of:
        if all(f in frame.columns for f in group):
            return group
    best = max(any_of, key=lambda g: sum(f in frame.columns for f in g))
    missing = [f for f in best if f not in frame.columns]
    hint = did_you_mean(missing[0], frame.columns)
    options = " or ".join("(" + ", ".join(g) + ")" for g in any_of)
    raise UserError(f"{source}: missing column `{missing[0]}`{hint}; this task needs {options}. "
                    f"Columns are: {', '.join(map(str, frame.columns))}. Map yours with data.columns, e.g. "
                    f"`--set data.columns.{missing[0]}=YOUR_COLUMN`")


@dataclass
class DataReport:
    """What happened to one input file's rows, so the counts add up:

    rows_read -> (empty, duplicates, filtered_out dropped) -> rows_valid -> (limited by data.max_rows)
    -> (overlong_dropped with `data.overlong: drop`) -> rows_train / rows_eval. `rows_used` is kept for older readers: the training rows taken from this
    file (the eval rows of a separate eval file). `encoding`/`encoding_confidence` say how the text was
    decoded (1.0: certain, e.g. UTF-8 or named in `data.encoding`; lower: a plausibility guess).
    """

    source: str
    rows_read: int = 0
    empty: int = 0
    duplicates: int = 0
    overlong: int = 0
    filtered_out: int = 0
    rows_used: int = 0
    examples: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rows_valid: int | None = None
    """Rows left after dropping empty/duplicate rows and applying the category/difficulty filters."""
    limited: int = 0
    """Valid rows left out by `data.max_rows`."""
    overlong_dropped: int = 0
    """Rows longer than train.max_length dropped (`data.overlong: drop`; otherwise they are truncated)."""
    rows_train: int | None = None
    rows_eval: int | None = None
    encoding: str | None = None
    encoding_confidence: float | None = None

    def add(self, kind: str, row_numbers: list[int]) -> None:
        setattr(self, kind, getattr(self, kind) + len(row_numbers))
        if row_numbers:
            self.examples.setdefault(kind, []).extend(row_numbers[:5])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rows_valid"] = self.valid_rows()
        return out

    def valid_rows(self) -> int:
        """`rows_valid` when the pipeline set it, else what the drop counts imply."""
        if self.rows_valid is not None:
            return self.rows_valid
        return max(0, self.rows_read - self.empty - self.duplicates - self.filtered_out)

    def lines(self) -> list[str]:
        name = self.source
        if self.encoding:
            certain = self.encoding_confidence is None or self.encoding_confidence >= 1.0
            name += f" ({self.encoding})" if certain else f" ({self.encoding}, guessed with confidence {self.encoding_confidence:.2f})"
        head = f"{name}: {self.rows_read} read → {self.valid_rows()} valid"
        if self.limited:
            head += f" → {self.valid_rows() - self.limited} kept (data.max_rows)"
        if self.overlong_dropped:
            head += f" → {self.valid_rows() - self.limited - self.overlong_dropped} within max_length"
        split = [f"{n} {label}" for n, label in ((self.rows_train, "train"), (self.rows_eval, "eval")) if n is not None]
        head += " → " + (" / ".join(split) if split else f"{self.rows_used} used")
        out = [head]
        for kind in ("empty", "duplicates", "overlong", "filtered_out"):
            count = getattr(self, kind)
            if count:
                where = ", ".join(map(str, self.examples.get(kind, [])))
                out.append(f"  {kind.replace('_', ' ')}: {count}" + (f" (rows {where}{', ...' if count > 5 else ''})" if where else ""))
        out.extend(f"  note: {n}" for n in self.notes)
        return out


def _row_numbers(frame: pd.DataFrame, mask: pd.Series) -> list[int]:
    return [int(i) + 1 for i in frame.index[mask]]


def is_missing(value) -> bool:
    """None or NaN: no value at all (an empty string *is* a value, e.g. a template renders it as-is)."""
    return value is None or (isinstance(value, float) and value != value)


def is_blank(value) -> bool:
    """None, NaN, a whitespace-only string or an empty list/dict: a field with nothing in it."""
    if is_missing(value):
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)):
        return len(value) == 0
    return False


def clean(frame: pd.DataFrame, fields: tuple[str, ...], report: DataReport, drop_duplicates: bool) -> pd.DataFrame:
    """Drop rows with an empty required field (and duplicates if asked), recording each in the report."""
    empty = frame[list(fields)].map(is_blank).any(axis=1)
    report.add("empty", _row_numbers(frame, empty))
    frame = frame[~empty]
    key = frame[list(fields)].astype(str)
    dup = key.duplicated(keep="first")
    if drop_duplicates:
        report.add("duplicates", _row_numbers(frame, dup))
        frame = frame[~dup]
    elif dup.any():
        report.notes.append(f"{int(dup.sum())} duplicate rows kept (data.drop_duplicates is false)")
    return frame


def apply_filters(frame: pd.DataFrame, categories: list[str], difficulties: list[str], report: DataReport) -> pd.DataFrame:
    for fld, allowed in (("category", categories), ("difficulty", difficulties)):
        if not allowed:
            continue
        if fld not in frame.columns:
            raise UserError(f"{report.source}: cannot filter by {fld}: the data has no `{fld}` field (map it with data.columns.{fld})")
        values = frame[fld].astype(str).str.strip()
        unknown = sorted(set(allowed) - set(values))
        if unknown:
            raise UserError(f"{report.source}: no rows with {fld} `{unknown[0]}`{did_you_mean(unknown[0], set(values))}; "
                            f"values are: {', '.join(sorted(set(values))[:20])}")
        keep = values.isin(allowed)
        report.add("filtered_out", _row_numbers(frame, ~keep))
        frame = frame[keep]
    return frame
