"""`tunelab eval RUN_DIR --data FILE` / `tunelab eval --model ALIAS --task summarize --data FILE`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import TRUST_REMOTE_CODE_HELP, app, console, user_errors, warn_remote_code


@app.command("eval")
@user_errors
def eval_command(
    run_dir: Optional[Path] = typer.Argument(None, help="A finished run directory (omit to evaluate a base model with --model)."),
    data: str = typer.Option(..., "--data", help="Labelled data file (e.g. dialogue + summary / summary1..N)."),
    model: Optional[str] = typer.Option(None, help="Evaluate this base model untrained (packaged alias or folder)."),
    task: Optional[str] = typer.Option(None, help="Task whose prompts and metrics to use with --model (default summarize)."),
    config: Optional[Path] = typer.Option(None, help="Run config for --model: prompt format, column mapping, generation."),
    output_dir: Optional[Path] = typer.Option(None, help="Where predictions.jsonl and eval_metrics.json go."),
    max_rows: Optional[int] = typer.Option(None, min=1, help="Evaluate only the first N rows."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Longest generated output, in tokens."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (with --do-sample)."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling mass (with --do-sample)."),
    repetition_penalty: Optional[float] = typer.Option(None, help="> 1 discourages repeating tokens."),
    do_sample: Optional[bool] = typer.Option(None, "--do-sample/--greedy", help="Sample instead of greedy decoding."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Prompts generated together."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP),
    overwrite: bool = typer.Option(False, help="Replace the results of an earlier evaluation in the output dir."),
):
    """Generate for every row of --data and score it (ROUGE for summarize); before/after training alike."""
    from tunelab.evaluation import evaluate_generation

    warn_remote_code(trust_remote_code)
    result = evaluate_generation(
        data, run_dir=run_dir, model=model, task=task, config=config, output_dir=output_dir, max_rows=max_rows,
        generation=dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        repetition_penalty=repetition_penalty, do_sample=do_sample, batch_size=batch_size),
        device=device, echo=console.print, trust_remote_code=trust_remote_code, overwrite=overwrite)
    scores = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    console.print_json(data=scores)
    console.print(f"predictions: {result.predictions_path}\nmetrics: {result.metrics_path}")
