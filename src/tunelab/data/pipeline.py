"""Data flow for a run: read -> map columns -> task.prepare -> clean -> filter -> split.

Returns frames of logical fields plus a report per file. Overlong rows are
checked later, once the tokenizer is known (`check_lengths`).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tunelab.config.schema import RunConfig
from tunelab.data.readers import read_table
from tunelab.data.split import train_eval_split
from tunelab.data.validate import DataReport, apply_filters, clean, map_columns, require_fields
from tunelab.errors import UserError
from tunelab.tasks.base import Task


@dataclass
class Splits:
    train: pd.DataFrame
    eval: pd.DataFrame
    reports: list[DataReport]


def load_frame(path: str, config: RunConfig, task: Task, split: str, report: DataReport | None = None) -> pd.DataFrame:
    """Read one file and bring it to the task's logical fields (no cleaning)."""
    report = report or DataReport(source=str(path))
    frame = read_table(path, config.data.encoding)
    report.rows_read = len(frame)
    frame = map_columns(frame, config.data.columns, task.fields.all_names(), str(path))
    frame = frame.reset_index(drop=True)
    frame = task.prepare(frame, split)
    return frame


def load_labelled(path: str, config: RunConfig, task: Task, split: str) -> tuple[pd.DataFrame, DataReport]:
    report = DataReport(source=str(path))
    frame = load_frame(path, config, task, split, report)
    group = require_fields(frame, task.fields.any_of, str(path))
    frame = clean(frame, group, report, config.data.drop_duplicates)
    frame = apply_filters(frame, config.data.categories, config.data.difficulties, report)
    if frame.empty:
        raise UserError(f"{path}: no usable rows left after cleaning and filters ({'; '.join(report.lines()[1:]) or 'all rows empty'})")
    report.rows_used = len(frame)
    return frame, report


def load_splits(config: RunConfig, task: Task) -> Splits:
    data = config.data
    if not data.train_path:
        raise UserError("no training data: set `data.train_path` in the config (or pass --data)")
    train, train_report = load_labelled(data.train_path, config, task, "train")
    if data.max_rows:
        train = train.iloc[: data.max_rows]
    reports = [train_report]
    if data.eval_path:
        evaluation, eval_report = load_labelled(data.eval_path, config, task, "eval")
        reports.append(eval_report)
    else:
        stratify = data.stratify_by if data.stratify_by in train.columns else task.stratify_field
        train, evaluation = train_eval_split(train, data.eval_fraction, data.seed, stratify, data.group_by)
    train_report.rows_used = len(train)
    return Splits(train=train, eval=evaluation, reports=reports)


def check_lengths(frame: pd.DataFrame, task: Task, tokenizer, max_length: int, report: DataReport, policy: str,
                  split: str = "train") -> pd.DataFrame:
    """Count rows longer than max_length tokens; drop them if the policy says so (truncation happens in encode)."""
    if frame.empty:
        return frame
    texts = task.texts_for_length(frame, tokenizer)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    over = pd.Series([n > max_length for n in lengths], index=frame.index)
    report.add("overlong", [int(i) + 1 for i in frame.index[over]])
    if over.any():
        action = "dropped" if policy == "drop" else "truncated"
        report.notes.append(f"{split}: {int(over.sum())} rows exceed max_length={max_length} tokens and were {action} "
                            f"(longest {max(lengths)}); see `tunelab data lengths`")
    if policy == "drop":
        frame = frame[~over]
    return frame
