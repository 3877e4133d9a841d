"""`tunelab predict | ensemble | export | submission check`: use trained runs on new data (parse, call the API, print).

Outputs follow one rule: an existing output is refused unless --overwrite, and never replaced when it is one of
the command's inputs; `export` replaces only a folder that is itself a tunelab bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import TRUST_REMOTE_CODE_HELP, app, console, err_console, user_errors, warn_remote_code
from tunelab.errors import UserError

submission_app = typer.Typer(no_args_is_help=True, help="Check competition submission files.")
app.add_typer(submission_app, name="submission")


@app.command("predict")
@user_errors
def predict(run_dir: Path = typer.Argument(..., help="A finished run directory or an exported offline bundle."),
            data: Path = typer.Option(..., "--data", help="Rows to predict (csv/tsv/json/jsonl/parquet)."),
            output: Path = typer.Option(..., "--output", help="Where to write the predictions."),
            fmt: Optional[str] = typer.Option(None, "--format", help="Output format (task-specific: csv, map, arena, jsonl)."),
            overwrite: bool = typer.Option(False, help="Replace --output if it exists."),
            device: Optional[str] = typer.Option(None, help="cpu, cuda or mps (default: auto)."),
            trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP)):
    """Predict with a trained run and write the task's predictions / submission file."""
    from tunelab.api import check_prediction_output, load

    check_prediction_output(output, overwrite, data, [run_dir])
    warn_remote_code(trust_remote_code)
    run = load(run_dir, device=device, trust_remote_code=trust_remote_code)
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
def ensemble(run_dirs: list[str] = typer.Argument(..., help="Two or more run directories of the same task; "
                                                   "`baseline:RUN` is that run's TF-IDF baseline."),
             data: Path = typer.Option(..., "--data"),
             output: Path = typer.Option(..., "--output"),
             weights: Optional[str] = typer.Option(None, "--weights", help="e.g. 0.6,0.4 (default: equal)."),
             fmt: Optional[str] = typer.Option(None, "--format"),
             overwrite: bool = typer.Option(False, help="Replace --output if it exists."),
             device: Optional[str] = typer.Option(None),
             trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP)):
    """Average the predicted probabilities of several runs and write one predictions / submission file."""
    from tunelab.api import check_prediction_output, ensemble as ensemble_runs, normalise_weights

    w = normalise_weights(parse_weights(weights), len(run_dirs))
    check_prediction_output(output, overwrite, data, run_dirs)
    warn_remote_code(trust_remote_code)
    task, frame, probs = ensemble_runs(run_dirs, data, w, device, trust_remote_code=trust_remote_code)
    path = task.write_predictions(task.predictions_frame(frame, probs), output, fmt)
    console.print(f"ensembled {len(run_dirs)} runs (weights {', '.join(f'{x:.3f}' for x in w)}): "
                  f"{len(frame)} predictions written to {path}")


@app.command("export")
@user_errors
def export(run_dir: Path = typer.Argument(...),
           offline_bundle: Optional[Path] = typer.Option(None, "--offline-bundle", help="Folder to create: the run "
                                                         "for `tunelab predict` on machines without network."),
           merged: Optional[Path] = typer.Option(None, "--merged", help="Folder to create: LoRA merged into fp32 "
                                                 "weights + tokenizer, for plain transformers `from_pretrained`."),
           gguf: Optional[Path] = typer.Option(None, "--gguf", help="GGUF file to write (llama-architecture decoders), "
                                               "for llama.cpp / Ollama."),
           gguf_type: str = typer.Option("f16", "--gguf-type", help="Tensor type in the GGUF file: f16, bf16 or f32."),
           overwrite: bool = typer.Option(False, help="Replace an earlier export of the same kind there (any other "
                                          "folder or file is never replaced)."),
           trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP)):
    """Export a run: an offline bundle for tunelab, a merged transformers folder, and/or a GGUF file."""
    from tunelab.api import export_bundle

    if offline_bundle is None and merged is None and gguf is None:
        raise UserError("say what to export: --offline-bundle DIR, --merged DIR and/or --gguf FILE.gguf")
    warn_remote_code(trust_remote_code)
    if offline_bundle is not None:
        path = export_bundle(run_dir, offline_bundle, overwrite=overwrite, trust_remote_code=trust_remote_code)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        console.print(f"offline bundle written to {path} ({size / 1e6:.1f} MB); use it with `tunelab predict {path} ...`")
    if merged is not None:
        from tunelab.api import export_merged

        result = export_merged(run_dir, merged, overwrite=overwrite, trust_remote_code=trust_remote_code)
        console.print(f"merged model written to {result.path}; load it with "
                      f"`{result.model_class}.from_pretrained(\"{result.path}\")`")
        if any(d.startswith("POOLING") for d in result.differences):
            err_console.print(f"[yellow]warning:[/] plain transformers' outputs differ from the run's: it was trained "
                              f"with mean pooling, which transformers does not apply (see {result.path / 'README.md'})",
                              markup=True, soft_wrap=True)
    if gguf is not None:
        from tunelab.api import export_gguf

        path = export_gguf(run_dir, gguf, tensor_type=gguf_type, overwrite=overwrite,
                           trust_remote_code=trust_remote_code)
        console.print(f"GGUF written to {path} ({path.stat().st_size / 1e6:.1f} MB, {gguf_type}); e.g. "
                      f"`llama-cli -m {path}`")


@submission_app.command("check")
@user_errors
def check(file: Path = typer.Argument(..., help="The submission CSV."),
          fmt: str = typer.Option(..., "--format", help="arena or map."),
          test: Optional[Path] = typer.Option(None, "--test", help="Test data: every id must be predicted exactly once."),
          id_column: Optional[str] = typer.Option(None, "--id-column", help="Id column in the test file (default: the format's).")):
    """Validate a submission file: columns, ids, probabilities (exit 0 if valid, 2 with the first problem)."""
    from tunelab.api import check_submission_file

    console.print(check_submission_file(file, fmt, test, id_column).summary())
