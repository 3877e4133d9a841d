"""`tunelab chat RUN_DIR` (interactive, streaming) and `tunelab generate RUN_DIR --data F --output F` (batched)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import TRUST_REMOTE_CODE_HELP, app, console, user_errors, warn_remote_code


@app.command()
@user_errors
def chat(
    target: str = typer.Argument(..., help="A run directory, or a model alias/folder to chat with untrained."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    max_new_tokens: int = typer.Option(256, help="Max tokens per reply."),
    temperature: float = typer.Option(0.7), top_p: float = typer.Option(0.9),
    greedy: bool = typer.Option(False, help="Greedy decoding instead of sampling."),
    device: Optional[str] = typer.Option(None),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP),
):
    """Talk to a model; tokens stream as they are generated. /reset clears the history, /exit quits."""
    from tunelab.api import load_target
    from tunelab.inference.chat import ChatSession
    from tunelab.tasks.base import GenerativeTask

    warn_remote_code(trust_remote_code)
    run = load_target(target, device, trust_remote_code=trust_remote_code, capability=GenerativeTask,
                      action="`tunelab chat`")
    session = ChatSession(run.model, run.tokenizer, run.config.generation.model_copy(update=dict(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, do_sample=not greedy)), system=system)
    console.print(f"chatting with {target} — /reset to clear, /exit to quit")
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            session.reset()
            console.print("(history cleared)")
            continue
        if not command:
            continue
        sys.stdout.write("bot> ")
        for piece in session.send(line):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


@app.command()
@user_errors
def generate(
    target: str = typer.Argument(..., help="A run directory (or a model alias/folder)."),
    data: Path = typer.Option(..., help="File with the prompts/questions (same columns as training)."),
    output: Path = typer.Option(..., help="Where to write answers (JSON lines)."),
    max_new_tokens: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
    do_sample: Optional[bool] = typer.Option(None), temperature: Optional[float] = typer.Option(None),
    top_p: Optional[float] = typer.Option(None), max_rows: Optional[int] = typer.Option(None),
    overwrite: bool = typer.Option(False, help="Replace --output if it exists."),
    device: Optional[str] = typer.Option(None),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP),
):
    """Batched generation for every row of a file; writes one JSON object per row."""
    from tunelab.api import check_prediction_output, load_target
    from tunelab.tasks.base import GenerativeTask

    check_prediction_output(output, overwrite, data, [Path(target)])
    warn_remote_code(trust_remote_code)
    run = load_target(target, device, trust_remote_code=trust_remote_code, capability=GenerativeTask,
                      action="`tunelab generate`")
    updates = {k: v for k, v in dict(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                                     temperature=temperature, top_p=top_p).items() if v is not None}
    run.config.generation = run.config.generation.model_copy(update=updates)
    frame = run.read(data)
    if max_rows:
        frame = frame.iloc[:max_rows]
    predictions = run.predict(frame)
    run.task.write_predictions(predictions, output)
    console.print(f"wrote {len(predictions)} answers to {output}")


@app.command("test")
@user_errors
def test_run(
    run_dir: str = typer.Argument(..., help="A run directory."),
    per_category: int = typer.Option(2, help="Held-out questions per category."),
    max_new_tokens: int = typer.Option(96),
    device: Optional[str] = typer.Option(None),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help=TRUST_REMOTE_CODE_HELP),
):
    """Test mode: answer held-out questions per category (the run's own eval split) and report tokens/s."""
    from rich.table import Table

    from tunelab.api import load, run_test_mode

    warn_remote_code(trust_remote_code)
    from tunelab.tasks.base import GenerativeTask

    report = run_test_mode(load(run_dir, device=device, trust_remote_code=trust_remote_code, capability=GenerativeTask,
                                action="test mode"),
                           per_category=per_category, max_new_tokens=max_new_tokens)
    table = Table(show_lines=True, title=f"{run_dir}: {len(report.answers)} held-out questions")
    for col in ("category", "question", "answer", "reference"):
        table.add_column(col, overflow="fold")
    for row in report.answers.itertuples():
        table.add_row(row.category, row.question[:200], row.answer[:300], row.reference[:200])
    console.print(table)
    console.print(f"generation: {report.new_tokens} tokens in {report.seconds:.1f} s = {report.tokens_per_second:.1f} tokens/s")
