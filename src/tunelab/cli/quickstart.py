"""`tunelab quickstart`: fine-tune the embedded model on the embedded data and show before/after (tunelab/quickstart.py)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from tunelab.cli.app import app, console, user_errors


@app.command()
@user_errors
def quickstart(output_dir: Optional[str] = typer.Option(None, help="Run directory (default runs/sft-<time>)."),
               samples: int = typer.Option(3, help="Held-out questions to show before/after."),
               set_items: Optional[list[str]] = typer.Option(None, "--set", help="Override any config key.")):
    """Fine-tune the embedded model on the embedded data and show before/after."""
    from tunelab.config import parse_set_options
    from tunelab.quickstart import run_quickstart

    console.rule("quickstart")
    result = run_quickstart(output_dir, parse_set_options(set_items), echo=console.print)
    m = result.metrics
    console.rule("before / after")
    console.print(f"eval loss: before {m.get('eval_before_loss', float('nan')):.4f} -> after {m.get('eval_loss', float('nan')):.4f}"
                  f"   (train {m.get('train_runtime_s', 0):.0f} s, {m.get('train_steps')} steps)")
    console.print(f"answers vs reference, ROUGE-L over {len(result.answers)} held-out questions: "
                  f"before {result.rouge_l[0]:.3f} -> after {result.rouge_l[1]:.3f}")
    table = Table(show_lines=True)
    for col in ("question", "reference", "before", "after"):
        table.add_column(col, overflow="fold")
    shown = result.answers.assign(n=result.answers["reference"].str.len()).sort_values("n").head(samples)
    for row in shown.itertuples():
        table.add_row(_clip(row.question), _clip(row.reference), _clip(row.before), _clip(row.after))
    console.print(table)
    console.print(f"run directory: {result.run_dir}  (all answers: quickstart_samples.csv; try: tunelab chat {result.run_dir})")


def _clip(text: str, n: int = 300) -> str:
    text = str(text)
    return text if len(text) <= n else text[:n] + "…"
