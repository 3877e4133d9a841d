"""`tunelab predict | ensemble | export | submission check`: use trained runs on new data.

Task-agnostic: every command goes through the run's task plug-in (`predict`,
`predict_proba`, `predictions_frame`, `write_predictions`).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import app, console, user_errors
from tunelab.errors import UserError

submission_app = typer.Typer(no_args_is_help=True, help="Check competition submission files.")
app.add_typer(submission_app, name="submission")


@app.command("predict")
@user_errors
def predict(run_dir: Path = typer.Argument(..., help="A finished run directory or an exported offline bundle."),
            data: Path = typer.Option(..., "--data", help="Rows to predict (csv/tsv/json/jsonl/parquet)."),
            output: Path = typer.Option(..., "--output", help="Where to write the predictions."),
            fmt: Optional[str] = typer.Option(None, "--format", help="Output format (task-specific: csv, map, arena, jsonl)."),
            device: Optional[str] = typer.Option(None, help="cpu, cuda or mps (default: auto).")):
    """Predict with a trained run and write the task's predictions / submission file."""
    from tunelab.api import load

    run = load(run_dir, device=device)
    frame = run.read(data)
    predictions = run.task.predict(run.model, run.tokenizer, frame)
    path = run.task.write_predictions(predictions, output, fmt)
    console.print(f"wrote {len(predictions)} predictions to {path}")


def parse_weights(text: str | None, n: int) -> list[float]:
    if not text:
        return [1.0 / n] * n
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"--weights must be comma-separated numbers, got `{text}`") from None
    if len(weights) != n:
        raise UserError(f"--weights has {len(weights)} values for {n} runs")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError("--weights must be non-negative and not all zero")
    return [w / sum(weights) for w in weights]


def ensemble_probabilities(run_dirs: list[Path], data: Path, weights: list[float], device: str | None = None):
    """Weighted average of the runs' class probabilities, aligned by class name.

    Returns (first run's task, its prepared frame, averaged probabilities in that task's class order).
    """
    import gc

    import numpy as np

    from tunelab.api import load

    first_task, first_frame, total = None, None, None
    for run_dir, weight in zip(run_dirs, weights):
        run = load(run_dir, device=device)
        task = run.task
        if not hasattr(task, "predict_proba"):
            raise UserError(f"{run_dir}: task `{task.name}` does not predict probabilities, so it cannot be ensembled")
        frame = run.read(data)
        probs = task.predict_proba(run.model, run.tokenizer, frame)
        if first_task is None:
            first_task, first_frame, total = task, frame, np.zeros_like(probs)
        else:
            if task.name != first_task.name:
                raise UserError(f"{run_dir}: task `{task.name}` differs from the first run's `{first_task.name}`")
            if set(task.classes) != set(first_task.classes):
                extra = sorted(set(task.classes) ^ set(first_task.classes))
                raise UserError(f"{run_dir}: its labels differ from the first run's (e.g. `{extra[0]}`); "
                                "ensembled runs must be trained on the same label set")
            if len(frame) != len(first_frame):
                raise UserError(f"{run_dir}: read {len(frame)} rows of {data}, the first run read {len(first_frame)}")
            order = [task.classes.index(c) for c in first_task.classes]
            probs = probs[:, order]
        total += weight * probs
        del run
        gc.collect()
    return first_task, first_frame, total


@app.command("ensemble")
@user_errors
def ensemble(run_dirs: list[Path] = typer.Argument(..., help="Two or more run directories of the same task."),
             data: Path = typer.Option(..., "--data"),
             output: Path = typer.Option(..., "--output"),
             weights: Optional[str] = typer.Option(None, "--weights", help="e.g. 0.6,0.4 (default: equal)."),
             fmt: Optional[str] = typer.Option(None, "--format"),
             device: Optional[str] = typer.Option(None)):
    """Average the predicted probabilities of several runs and write one predictions / submission file."""
    w = parse_weights(weights, len(run_dirs))
    task, frame, probs = ensemble_probabilities(run_dirs, data, w, device)
    path = task.write_predictions(task.predictions_frame(frame, probs), output, fmt)
    console.print(f"ensembled {len(run_dirs)} runs (weights {', '.join(f'{x:.3f}' for x in w)}): "
                  f"{len(frame)} predictions written to {path}")


BUNDLE_README = """# tunelab offline bundle: {name}

Self-contained: merged model weights and tokenizer in `final/`, the resolved
config in `config.yaml`, what the task learned from data in `task_state.json`.
No network is needed (set HF_HUB_OFFLINE=1 on the target machine).

    tunelab predict {name} --data test.csv --output submission.csv

or in Python:

    import tunelab
    run = tunelab.load("{name}")
    predictions = run.predict("test.csv")

task: {task}   base model: {model}   exported from: {source}
"""


def export_bundle(run_dir: Path, target: Path) -> Path:
    """Write a folder that `tunelab.load` / `tunelab predict` can use offline: merged weights, tokenizer, config, state."""
    from tunelab.api import load
    from tunelab.config import save_config
    from tunelab.io import atomic_path, atomic_write_text
    from tunelab.training.rundir import RunDir

    run = load(run_dir)  # adapters are merged into the base weights on load
    source = RunDir(Path(run_dir))
    config = run.config.model_copy(deep=True)
    config.lora.enabled = False  # the weights in final/ already include the adapter
    with atomic_path(target, is_dir=True) as tmp:
        bundle = RunDir(tmp)
        run.model.save_pretrained(str(bundle.final))
        run.tokenizer.save_pretrained(str(bundle.final))
        save_config(config, bundle.config)
        shutil.copyfile(source.task_state, bundle.task_state)
        if source.metrics.exists():
            shutil.copyfile(source.metrics, bundle.metrics)
        atomic_write_text(tmp / "README.md", BUNDLE_README.format(
            name=target.name, task=config.task.name, model=config.model.name_or_path, source=source.path))
    return target


@app.command("export")
@user_errors
def export(run_dir: Path = typer.Argument(...),
           offline_bundle: Path = typer.Option(..., "--offline-bundle", help="Folder to create (replaced if it exists).")):
    """Package a run as a self-contained folder for machines without network (e.g. Kaggle notebooks)."""
    path = export_bundle(run_dir, offline_bundle)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    console.print(f"offline bundle written to {path} ({size / 1e6:.1f} MB); use it with `tunelab predict {path} ...`")


@submission_app.command("check")
@user_errors
def check(file: Path = typer.Argument(..., help="The submission CSV."),
          fmt: str = typer.Option(..., "--format", help="arena or map."),
          test: Optional[Path] = typer.Option(None, "--test", help="Test data: every id must be predicted exactly once."),
          id_column: Optional[str] = typer.Option(None, "--id-column", help="Id column in the test file (default: the format's).")):
    """Validate a submission file: columns, ids, probabilities (exit 0 if valid, 2 with the first problem)."""
    from tunelab.data.readers import read_table
    from tunelab.io.submission import FORMATS, check_submission

    expected = None
    if test is not None:
        spec = FORMATS.get(fmt)
        column = id_column or (spec.id_column if spec else "id")
        frame = read_table(test)
        if column not in frame.columns:
            raise UserError(f"{test}: no id column `{column}` (set --id-column)")
        expected = frame[column].tolist()
    result = check_submission(file, fmt, expected)
    console.print(result.summary())


__all__ = ["ensemble_probabilities", "export_bundle", "parse_weights"]
