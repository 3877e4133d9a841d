"""`tunelab sweep CONFIG.yaml --trials N [--param NAME=LOW:HIGH ...]`: a hyper-parameter search."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tunelab.cli.app import app, console, user_errors


@app.command()
@user_errors
def sweep(
    config: Path = typer.Argument(..., help="YAML run config to start from (an optional `sweep:` section sets "
                                            "trials, params, timeout, seed)."),
    trials: Optional[int] = typer.Option(None, "--trials", "-n", help="Training runs to try (default: sweep.trials, else 10)."),
    param: Optional[list[str]] = typer.Option(
        None, "--param", "-p",
        help="Search NAME over LOW:HIGH, or NAME alone for its default range (repeatable). Names: learning_rate "
             "(log scale), epochs, lora_r (log), warmup_ratio, lora_alpha (log), lora_dropout, weight_decay, "
             "batch_size (log). Default: the first four."),
    timeout: Optional[float] = typer.Option(None, help="Start no new trial after this many seconds."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir",
                                             help="Sweep directory (default: train.output_dir, else runs/sweep-<task>-<time>)."),
    set_items: Optional[list[str]] = typer.Option(None, "--set", help="Any config key for every trial: --set train.max_steps=50."),
    seed: Optional[int] = typer.Option(None, help="Sampler seed (default: sweep.seed, else train.seed)."),
    resume: bool = typer.Option(False, help="Continue an interrupted sweep in its directory."),
    overwrite: bool = typer.Option(False, help="Replace an existing sweep in the directory."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show each trial's training output (always in trial-NNN/train.log)."),
):
    """Search learning rate, epochs, LoRA rank, warmup... for the best eval metric; writes trials.csv and best_config.yaml."""
    from tunelab.config import parse_set_options
    from tunelab.sweeps import sweep as run_sweep

    result = run_sweep(config, trials=trials, params=param or None, output_dir=output_dir, timeout=timeout,
                       echo=console.print, overrides=parse_set_options(set_items) or None, resume=resume,
                       overwrite=overwrite, seed=seed, verbose=verbose)
    table = Table(title=f"sweep: {result.metric} ({'higher' if result.greater_is_better else 'lower'} is better)")
    names = list(result.params)
    for col in ("trial", "state", result.metric, *names, "seconds"):
        table.add_column(col, justify="right" if col not in ("state",) else "left")
    for row in result.trials.to_dict("records"):
        best = row["trial"] == result.best_trial
        table.add_row(f"{row['trial']:03d}", row["state"], _num(row[result.metric], 4), *(_num(row[n]) for n in names),
                      _num(row["duration_s"], 0), style="bold green" if best else None)
    console.print(table)
    if result.best_trial is None:
        console.print(f"no trial finished; see {result.sweep_dir / 'trials.csv'}")
        return
    console.print(f"best: trial-{result.best_trial:03d}  {result.metric} {result.best_value:.4f}  run: {result.best_run_dir}")
    console.print(f"best config: {result.best_config}   (train it: tunelab train {result.best_config})")
    console.print(f"trials: {result.sweep_dir / 'trials.csv'}   plot: {result.sweep_dir / 'plots' / 'trials.png'}")


def _num(value, digits: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if digits is not None:
            return f"{value:.{digits}f}"
        if value.is_integer() and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.2e}" if abs(value) < 1e-2 else f"{value:.4g}"
    return str(value)
