"""Data flow for a run: read -> map columns -> task.prepare -> clean -> filter -> split -> length check.

Returns frames of logical fields plus a report per file. The frames keep the file's row order as their
index, so `index + 1` is the data row number a spreadsheet shows (used in reports and in the saved
eval split). The pipeline needs only what `TaskData` describes, so data/ never imports tasks/.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from tunelab.config.schema import RunConfig
from tunelab.data.readers import read_table
from tunelab.data.split import train_eval_split
from tunelab.data.validate import DataReport, apply_filters, clean, map_columns, require_fields
from tunelab.errors import UserError


class TaskData(Protocol):
    """The part of a task plug-in (tasks/base.py) that the data pipeline uses."""

    fields: "object"  # tasks.base.Fields: any_of, optional, targets, all_names()
    stratify_field: str | None

    def prepare(self, frame: pd.DataFrame, split: str) -> pd.DataFrame: ...

    def input_lengths(self, frame: pd.DataFrame, tokenizer) -> list[int]: ...


@dataclass
class Splits:
    train: pd.DataFrame
    eval: pd.DataFrame
    reports: list[DataReport]

    def eval_rows(self) -> list[int]:
        """1-based data row numbers of the held-out rows in their source file (train_path or eval_path)."""
        return [int(i) + 1 for i in self.eval.index]


def load_frame(path: str, config: RunConfig, task: TaskData, split: str, report: DataReport | None = None) -> pd.DataFrame:
    """Read one file and bring it to the task's logical fields (no cleaning).

    For `split="predict"` a mapped label/reference column may be absent: a test file has no labels."""
    report = report or DataReport(source=str(path))
    frame = read_table(path, config.data.encoding, report=report)
    report.rows_read = len(frame)
    mapping = config.data.columns
    if split == "predict":
        mapping = {f: c for f, c in mapping.items() if not (f in task.fields.targets and c not in frame.columns)}
    frame = map_columns(frame, mapping, task.fields.all_names(), str(path))
    frame = task.prepare(frame.reset_index(drop=True), split)
    if split == "predict":  # the model's inputs must be there; labels/references may not
        targets = set(task.fields.targets)
        inputs = tuple(dict.fromkeys(tuple(f for f in group if f not in targets) for group in task.fields.any_of))
        require_fields(frame, tuple(g for g in inputs if g), str(path))
    return frame


def load_labelled(path: str, config: RunConfig, task: TaskData, split: str) -> tuple[pd.DataFrame, DataReport]:
    report = DataReport(source=str(path))
    frame = load_frame(path, config, task, split, report)
    group = require_fields(frame, task.fields.any_of, str(path))
    frame = clean(frame, group, report, config.data.drop_duplicates)
    frame = apply_filters(frame, config.data.categories, config.data.difficulties, report)
    if frame.empty:
        raise UserError(f"{path}: no usable rows left after cleaning and filters ({'; '.join(report.lines()[1:]) or 'all rows empty'})")
    report.rows_valid = report.rows_used = len(frame)
    return frame, report


def load_splits(config: RunConfig, task: TaskData, tokenizer=None) -> Splits:
    """The run's train and eval rows. With a tokenizer, overlong rows are counted (and dropped when
    `data.overlong: drop`) on both sides, so every caller sees the split training will use."""
    data = config.data
    if not data.train_path:
        raise UserError("no training data: set `data.train_path` in the config (or pass --data)")
    train, train_report = load_labelled(data.train_path, config, task, "train")
    if data.max_rows:
        train_report.limited = max(0, len(train) - data.max_rows)
        train = train.iloc[: data.max_rows]
    reports = [train_report]
    if data.eval_path:
        evaluation, eval_report = load_labelled(data.eval_path, config, task, "eval")
        reports.append(eval_report)
    else:
        stratify = data.stratify_by if data.stratify_by in train.columns else task.stratify_field
        train, evaluation = train_eval_split(train, data.eval_fraction, data.seed, stratify, data.group_by)
    if tokenizer is not None:
        max_length = config.train.max_length
        train = check_lengths(train, task, tokenizer, max_length, reports[0], data.overlong, "train")
        evaluation = check_lengths(evaluation, task, tokenizer, max_length, reports[-1], data.overlong, "eval")
    reports[-1].rows_eval = len(evaluation)
    train_report.rows_used = train_report.rows_train = len(train)
    return Splits(train=train, eval=evaluation, reports=reports)


def check_lengths(frame: pd.DataFrame, task: TaskData, tokenizer, max_length: int, report: DataReport, policy: str,
                  split: str = "train") -> pd.DataFrame:
    """Count rows longer than max_length tokens; drop them if the policy says so (truncation happens in encode)."""
    if frame.empty:
        return frame
    lengths = task.input_lengths(frame, tokenizer)
    over = pd.Series([n > max_length for n in lengths], index=frame.index)
    report.add("overlong", [int(i) + 1 for i in frame.index[over]])
    if over.any():
        action = "dropped" if policy == "drop" else "truncated"
        report.notes.append(f"{split}: {int(over.sum())} rows exceed max_length={max_length} tokens and were {action} "
                            f"(longest {max(lengths)}); see `tunelab data lengths`")
    if policy == "drop":
        report.overlong_dropped += int(over.sum())
        frame = frame[~over]
    return frame
