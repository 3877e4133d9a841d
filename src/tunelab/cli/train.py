"""`tunelab train CONFIG.yaml [overrides]`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import app, console, user_errors
from tunelab.errors import UserError


def collect_overrides(preset, epochs, learning_rate, batch_size, max_length, output_dir, categories, difficulties,
                      data, model, max_steps, set_items, lora_r=None, load_8bit=None, load_4bit=None) -> dict:
    from tunelab.config import parse_set_options

    overrides = {
        "train.preset": preset, "train.epochs": epochs, "train.learning_rate": learning_rate,
        "train.batch_size": batch_size, "train.max_length": max_length, "train.output_dir": output_dir,
        "train.max_steps": max_steps, "data.train_path": data, "model.name_or_path": model,
        "lora.r": lora_r, "model.load_in_8bit": load_8bit or None, "model.load_in_4bit": load_4bit or None,
        "data.categories": [c.strip() for c in categories.split(",")] if categories else None,
        "data.difficulties": [d.strip() for d in difficulties.split(",")] if difficulties else None,
    }
    overrides.update(parse_set_options(set_items))
    return overrides


@app.command()
@user_errors
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML run config (see examples/); without one, chat/QA SFT from the options."),
    preset: Optional[str] = typer.Option(None, help="fast | balanced (default) | quality | memory_efficient"),
    epochs: Optional[float] = typer.Option(None, help="Training epochs."),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="Peak learning rate (also --lr)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per-device batch size."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Max tokens per example."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after N optimizer steps."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Run directory (default runs/<task>-<time>)."),
    data: Optional[str] = typer.Option(None, "--data", help="Training data file, overrides data.train_path "
                                       "(also --dataset_path)."),
    model: Optional[str] = typer.Option(None, help="Model folder / packaged alias / Hub id."),
    categories: Optional[str] = typer.Option(None, help="Comma-separated categories to keep."),
    difficulties: Optional[str] = typer.Option(None, help="Comma-separated difficulties to keep."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank."),
    load_8bit: bool = typer.Option(False, "--load-8bit", help="Load the base model in 8-bit (CUDA)."),
    load_4bit: bool = typer.Option(False, "--load-4bit", help="Load the base model in 4-bit, QLoRA (CUDA)."),
    set_items: Optional[list[str]] = typer.Option(None, "--set", help="Any config key: --set lora.r=8 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its newest complete "
                                "checkpoint (with --output-dir). Only --max-steps / --epochs may change; a finished "
                                "run is left as is."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --output-dir (only a folder "
                                   "tunelab created for a run; the old run is deleted once the new one has started)."),
    # Short names other trainers use; hidden so each option shows one name in --help (its help names them).
    lr: Optional[float] = typer.Option(None, "--lr", hidden=True),
    dataset_path: Optional[str] = typer.Option(None, "--dataset-path", hidden=True),
):
    """Fine-tune a model as the config says; writes a run directory.

    Ctrl-C (or SIGTERM) saves a checkpoint after the current step and stops; `--resume` continues from it.
    Option names take _ or - alike (--batch_size is --batch-size).
    Exit codes: 0 done (or a resumed run that had already finished), 2 a mistake in the input, 130 interrupted."""
    from tunelab.api import train as run_training
    from tunelab.config import build_config, load_config

    learning_rate = _one_of("--learning-rate", learning_rate, "--lr", lr)
    data = _one_of("--data", data, "--dataset_path", dataset_path)
    overrides = collect_overrides(preset, epochs, learning_rate, batch_size, max_length, output_dir,
                                  categories, difficulties, data, model, max_steps, set_items,
                                  lora_r, load_8bit, load_4bit)
    stored = Path(output_dir) / "config.yaml" if output_dir else None
    if config:
        cfg = load_config(config, overrides)
    elif resume and stored is not None and stored.is_file():  # `--resume --output-dir RUN`: the run's own config
        cfg = load_config(stored, overrides)
    else:
        cfg = build_config({"task": "sft"}, overrides, source="command line")
    run_training(cfg, resume=resume, overwrite=overwrite, echo=console.print)  # it prints the end-of-run summary


def _one_of(name: str, value, alias: str, alias_value):
    """An option given under its name or its alias; both with different values is a mistake, not a silent pick."""
    if value is not None and alias_value is not None and value != alias_value:
        raise UserError(f"{name} and {alias} are the same option; give it once")
    return value if value is not None else alias_value
