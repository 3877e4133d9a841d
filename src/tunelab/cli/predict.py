"""`tunelab predict | ensemble | export | submission check`: use trained runs on new data (parse, call the API, print)."""
from __future__ import annotations

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
    predictions = run.predict(data)
    path = run.task.write_predictions(predictions, output, fmt)
    console.print(f"wrote {len(predictions)} predictions to {path}")


def parse_weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"--weights must be comma-separated numbers, got `{text}`") from None


@app.command("ensemble")
@user_errors
def ensemble(run_dirs: list[Path] = typer.Argument(..., help="Two or more run directories of the same task."),
             data: Path = typer.Option(..., "--data"),
             output: Path = typer.Option(..., "--output"),
             weights: Optional[str] = typer.Option(None, "--weights", help="e.g. 0.6,0.4 (default: equal)."),
             fmt: Optional[str] = typer.Option(None, "--format"),
             device: Optional[str] = typer.Option(None)):
    """Average the predicted probabilities of several runs and write one predictions / submission file."""
    from tunelab.api import ensemble as ensemble_runs, normalise_weights

    w = normalise_weights(parse_weights(weights), len(run_dirs))
    task, frame, probs = ensemble_runs(run_dirs, data, w, device)
    path = task.write_predictions(task.predictions_frame(frame, probs), output, fmt)
    console.print(f"ensembled {len(run_dirs)} runs (weights {', '.join(f'{x:.3f}' for x in w)}): "
                  f"{len(frame)} predictions written to {path}")


@app.command("export")
@user_errors
def export(run_dir: Path = typer.Argument(...),
           offline_bundle: Path = typer.Option(..., "--offline-bundle", help="Folder to create (replaced if it exists).")):
    """Package a run as a self-contained folder for machines without network (e.g. Kaggle notebooks)."""
    from tunelab.api import export_bundle

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
    from tunelab.api import check_submission_file

    console.print(check_submission_file(file, fmt, test, id_column).summary())
