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


@app.command("test")
@user_errors
def test_run(
    run_dir: str = typer.Argument(..., help="A run directory."),
    per_category: int = typer.Option(2, help="Held-out questions per category."),
    max_new_tokens: int = typer.Option(96),
    device: Optional[str] = typer.Option(None),
):
    """Test mode: answer held-out questions per category (the run's own eval split) and report tokens/s."""
    from rich.table import Table

    from tunelab.api import load
    from tunelab.data.pipeline import load_splits
    from tunelab.inference.engine import GenerationEngine
    from tunelab.io import atomic_write_json

    run = load(run_dir, device=device)
    held_out = load_splits(run.config, run.task).eval
    if held_out.empty:
        from tunelab.errors import UserError

        raise UserError(f"{run_dir}: the run has no held-out rows (data.eval_fraction was 0 and no eval_path)")
    by = "category" if "category" in held_out.columns else None
    sample = held_out.groupby(by, sort=True).head(per_category) if by else held_out.head(per_category * 3)
    engine = GenerationEngine(run.model, run.tokenizer, run.config.generation.model_copy(update={"max_new_tokens": max_new_tokens}))
    prompts = [run.task.generation_prompt(row, run.tokenizer) for _, row in sample.iterrows()]
    answers = engine.generate(prompts)
    table = Table(show_lines=True, title=f"{run_dir}: {len(answers)} held-out questions")
    for col in ("category", "question", "answer", "reference"):
        table.add_column(col, overflow="fold")
    rows = []
    for (_, row), answer in zip(sample.iterrows(), answers):
        reference = run.task.reference(row)
        question = str(row.get("question", row.get("prompt", "")))
        table.add_row(str(row.get("category", "")), question[:200], answer[:300], reference[:200])
        rows.append({"category": row.get("category"), "question": question, "answer": answer, "reference": reference})
    console.print(table)
    stats = engine.stats
    console.print(f"generation: {stats.new_tokens} tokens in {stats.seconds:.1f} s = {stats.tokens_per_second:.1f} tokens/s")
    atomic_write_json(Path(run_dir) / "test_answers.json", {"tokens_per_second": stats.tokens_per_second, "answers": rows})
