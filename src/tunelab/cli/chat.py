"""`tunelab chat RUN_DIR` (interactive, streaming) and `tunelab generate RUN_DIR --data F --output F` (batched)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.app import app, console, user_errors


def _load(target: str, device: Optional[str]):
    from tunelab.api import load, load_base

    return load(target, device=device) if (Path(target) / "config.yaml").exists() else load_base(target, device=device)


@app.command()
@user_errors
def chat(
    target: str = typer.Argument(..., help="A run directory, or a model alias/folder to chat with untrained."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    max_new_tokens: int = typer.Option(256, help="Max tokens per reply."),
    temperature: float = typer.Option(0.7), top_p: float = typer.Option(0.9),
    greedy: bool = typer.Option(False, help="Greedy decoding instead of sampling."),
    device: Optional[str] = typer.Option(None),
):
    """Talk to a model; tokens stream as they are generated. /reset clears the history, /exit quits."""
    from tunelab.inference.chat import ChatSession

    run = _load(target, device)
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
):
    """Batched generation for every row of a file; writes one JSON object per row."""
    from tunelab.errors import UserError

    if output.exists() and not overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it")
    run = _load(target, device)
    updates = {k: v for k, v in dict(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                                     temperature=temperature, top_p=top_p).items() if v is not None}
    run.config.generation = run.config.generation.model_copy(update=updates)
    frame = run.read(data)
    if max_rows:
        frame = frame.iloc[:max_rows]
    predictions = run.predict(frame)
    run.task.write_predictions(predictions, output)
    console.print(f"wrote {len(predictions)} answers to {output}")
