"""`tunelab data stats|check|lengths FILE`: look at data before training on it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tunelab.cli.app import app, console, user_errors

data_app = typer.Typer(no_args_is_help=True, help="Inspect data files: statistics, quality report, token lengths.")
app.add_typer(data_app, name="data")


@data_app.command("stats")
@user_errors
def stats(file: Path, encoding: str = typer.Option("auto")):
    """Rows, columns, text lengths and label counts of a data file."""
    from tunelab.data.readers import read_table
    from tunelab.data.stats import describe

    info = describe(read_table(file, encoding))
    table = Table(title=f"{file} — {info['rows']} rows, {info['duplicate_rows']} duplicate rows")
    for col in ("column", "empty", "unique", "chars mean", "median", "p95", "max", "top values"):
        table.add_column(col)
    for name, c in info["columns"].items():
        top = ", ".join(f"{k}={v}" for k, v in list(c.get("counts", {}).items())[:6])
        table.add_row(name, str(c["empty"]), str(c.get("unique", "")), str(c.get("chars_mean", "")),
                      str(c.get("chars_median", "")), str(c.get("chars_p95", "")), str(c.get("chars_max", "")), top)
    console.print(table)


@data_app.command("check")
@user_errors
def check(config: Path, data: Optional[str] = typer.Option(None, help="Override data.train_path."),
          set_items: Optional[list[str]] = typer.Option(None, "--set")):
    """Run the data pipeline of a config (read, map, clean, filter, split, length check) and print the report."""
    from tunelab.config import load_config, parse_set_options
    from tunelab.data.pipeline import load_splits
    from tunelab.models import load_tokenizer
    from tunelab.tasks import get_task

    overrides = {"data.train_path": data, **parse_set_options(set_items)}
    cfg = load_config(config, overrides)
    task = get_task(cfg.task.name)(cfg)
    splits = load_splits(cfg, task, load_tokenizer(cfg.model))
    for report in splits.reports:
        for line in report.lines():
            console.print(line)
    console.print(f"split: {len(splits.train)} train / {len(splits.eval)} eval rows")


@data_app.command("lengths")
@user_errors
def lengths(config: Path, data: Optional[str] = typer.Option(None), png: Path = typer.Option(Path("token_lengths.png")),
            set_items: Optional[list[str]] = typer.Option(None, "--set")):
    """Token lengths of the task's model inputs: percentiles, truncation share, histogram PNG."""
    from tunelab.config import load_config, parse_set_options
    from tunelab.data.pipeline import load_splits
    from tunelab.lab.lengths import length_report
    from tunelab.models import load_tokenizer
    from tunelab.tasks import get_task

    cfg = load_config(config, {"data.train_path": data, **parse_set_options(set_items)})
    task = get_task(cfg.task.name)(cfg)
    splits = load_splits(cfg, task)
    tokenizer = load_tokenizer(cfg.model)
    task.fit(splits.train)
    report = length_report(task.input_lengths(splits.train, tokenizer), cfg.train.max_length, png)
    report.update(tokenizer_fit_report(tokenizer, splits.train, cfg.model.name_or_path))
    console.print_json(data=report)


def tokenizer_fit_report(tokenizer, frame, model: str) -> dict:
    """Tokens per letter for each script of the data (its first rows), and the fit warning if any."""
    from tunelab.data.tokenizer_fit import SAMPLE_ROWS, fit_warning, frame_texts, script_costs

    texts = frame_texts(frame, SAMPLE_ROWS * 5)
    costs = script_costs(tokenizer, texts)
    return {"tokens_per_letter": {c.script: round(c.tokens_per_character, 3) for c in costs},
            "letters_per_script": {c.script: c.characters for c in costs},
            "tokenizer_fit": fit_warning(tokenizer, texts, model) or "fine: at most ~2 tokens per letter"}
