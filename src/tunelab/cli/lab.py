"""`tunelab lab tokens|template|compare|explain|lengths`: look inside fine-tuning before trusting it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tunelab.cli.app import app, console, user_errors

lab_app = typer.Typer(no_args_is_help=True, help="Understand fine-tuning: special tokens, the chat template and "
                      "loss mask, models side by side, one training step explained, token lengths.")
app.add_typer(lab_app, name="lab")


def _shown(text: str) -> str:
    """A token's text with its invisible characters made visible (newline, tab, leading/trailing spaces)."""
    return text.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·") if text.strip() != text or "\n" in text \
        else text


# -- tokens ----------------------------------------------------------------------------------------------
@lab_app.command("tokens")
@user_errors
def tokens(model: str = typer.Argument(..., help="A packaged alias, a model folder or a run's final/ folder."),
           data: Optional[Path] = typer.Option(None, help="A data file: tokens per character for each script in it."),
           column: Optional[list[str]] = typer.Option(None, help="With --data: measure only these columns."),
           add: Optional[str] = typer.Option(None, help='Comma-separated new tokens, e.g. "<|law|>,<|case|>".'),
           output: Optional[Path] = typer.Option(None, help="With --add: the model+tokenizer folder to write."),
           overwrite: bool = typer.Option(False, help="With --add: replace an earlier --add output folder."),
           encoding: str = typer.Option("auto", help="With --data: the file's encoding.")):
    """Special tokens, chat-template control tokens, added tokens and a sample chat token by token;
    with --add, a copy of the model with new tokens (embeddings grown, new rows = mean of the old)."""
    from tunelab.errors import UserError

    if add is not None:
        if output is None:
            raise UserError("--add needs --output DIR: the folder to save the model with its new tokens")
        _add_tokens(model, add, output, overwrite)
        return
    if output is not None:
        raise UserError("--output goes with --add (the folder for the model with new tokens)")
    from tunelab.lab.tokens import inspect_tokens

    report = inspect_tokens(model, data, column, encoding)
    console.print(f"[bold]{escape(report.model)}[/]: {report.tokenizer_class}, {report.vocabulary:,} tokens")
    table = Table(title="special tokens")
    for name in ("role", "token", "id"):
        table.add_column(name)
    for role, token, token_id in report.special:
        table.add_row(role, escape(token) if token is not None else "[dim]none[/]",
                      str(token_id) if token_id is not None else "")
    console.print(table)
    if report.template_tokens:
        console.print("chat-template control tokens: " + ", ".join(f"{escape(t)} = {i}" for t, i in report.template_tokens))
    else:
        console.print("no chat template (an encoder, or a base model: the raw text is the input)")
    added = Table(title=f"added tokens ({len(report.added)})")
    for name in ("id", "token", "special"):
        added.add_column(name)
    for token, token_id, special in report.added:
        added.add_row(str(token_id), escape(token), "yes" if special else "no")
    console.print(added)
    sample = Table(title=f"a sample {report.sample_kind}, token by token ({len(report.sample)} tokens)")
    for name in ("#", "id", "token", "text"):
        sample.add_column(name)
    for piece in report.sample:
        style = "bold magenta" if piece.special else ""
        sample.add_row(str(piece.position), str(piece.id), Text(piece.token, style=style), Text(_shown(piece.text)))
    console.print(sample)
    if report.data_source:
        costs = Table(title=f"tokens per character in {escape(report.data_source)}")
        for name in ("script", "letters", "tokens", "tokens/letter", "unknown tokens"):
            costs.add_column(name)
        for cost in report.scripts:
            costs.add_row(cost.script, f"{cost.characters:,}", f"{cost.tokens:,}", f"{cost.tokens_per_character:.2f}",
                          str(cost.unknown_tokens))
        console.print(costs)
        if report.fit_warning:
            console.print(f"[yellow]{escape(report.fit_warning)}[/]")
        elif report.scripts:
            console.print("tokenizer fit: at most ~2 tokens per letter of this data's main script(s), fine")


def _add_tokens(model: str, add: str, output: Path, overwrite: bool) -> None:
    from tunelab.lab.tokens import add_tokens, parse_token_list

    result = add_tokens(model, parse_token_list(add), output, overwrite)
    table = Table(title=f"added to {escape(result.base)}")
    for name in ("token", "id", "saved tokenizer encodes it as"):
        table.add_column(name)
    for token, token_id in result.tokens.items():
        table.add_row(escape(token), str(token_id), str(result.encodings[token]))
    console.print(table)
    console.print(f"embeddings: {result.embedding_rows_before:,} -> {result.embedding_rows_after:,} rows "
                  f"(new rows = mean of the existing rows; output embeddings "
                  f"{'tied to the input ones' if result.tied_output_embeddings else 'set the same way'})")
    console.print(f"{escape(result.sample_text)!r} -> " +
                  " ".join(f"{escape(p.token)}={p.id}" for p in result.sample), soft_wrap=True)
    console.print(f"saved to {escape(str(result.output))}: train on it with `model: {{name_or_path: {escape(str(result.output))}}}`")
    console.print(f"LoRA runs on this folder train the new rows in full beside the adapters (peft's trainable "
                  f"tokens, ids {sorted(result.tokens.values())}, read from its tunelab_added_tokens.json; "
                  f"`lora.trainable_token_indices` overrides); a full fine-tune trains them anyway", soft_wrap=True)


# -- template and loss mask --------------------------------------------------------------------------------
TRAINED_STYLES = ("black on green3", "black on green4")
MASKED_STYLES = ("grey70", "grey50")
INPUT_STYLES = ("black on light_sky_blue1", "black on sky_blue2")
"""Alternating styles, so token boundaries show in the terminal too."""


def example_text(example) -> Text:
    """One example as rich Text: trained tokens on green, masked ones grey, alternating to show boundaries."""
    text = Text()
    for piece, trained in zip(example.pieces, example.trained):
        styles = INPUT_STYLES if example.labels is None else TRAINED_STYLES if trained else MASKED_STYLES
        style = styles[piece.position % 2]
        if piece.special:
            style += " italic"
        text.append(piece.text.replace("\n", "↵\n"), style=style)
    return text


@lab_app.command("template")
@user_errors
def template(config: Path, rows: int = typer.Option(3, help="Training rows to show."),
             html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML view."),
             json_path: Optional[Path] = typer.Option(None, "--json", help="Also save the processed examples "
                                                      "(text, input_ids, labels, mask) as JSON."),
             data: Optional[str] = typer.Option(None, help="Override data.train_path."),
             overwrite: bool = typer.Option(False, help="Replace existing --html/--json files."),
             set_items: Optional[list[str]] = typer.Option(None, "--set")):
    """The run's examples exactly as training sees them: template, truncation, and the tokens the loss falls on."""
    from tunelab.io import check_output_file
    from tunelab.lab.template import (
        example_summary, load_view_config, template_view, totals_line, write_html, write_json,
    )

    for path, option in ((html, "--html"), (json_path, "--json")):
        if path is not None:
            check_output_file(path, overwrite, inputs=[config], option=option)
    view = template_view(load_view_config(config, data, set_items), rows, str(config))
    console.print(f"[bold]{escape(str(config))}[/]: model {escape(view.model)}; {escape(view.rendering)}; "
                  f"max_length {view.max_length}", soft_wrap=True)
    if view.token_level:
        console.print(Text("trained (label = the token)", style=TRAINED_STYLES[0]) + Text("  ") +
                      Text("masked (label -100, context only)", style=MASKED_STYLES[1]))
    else:
        console.print(Text("model input", style=INPUT_STYLES[0]) + Text(" -> one label per example"))
    for example in view.examples:
        console.rule(f"row {example.row}{' · ' + example.variant if example.variant else ''} · "
                     f"{example_summary(example)}")
        if example.note:
            console.print(f"[yellow]{escape(example.note)}[/]")
        console.print(example_text(example), soft_wrap=True)
    console.rule()
    console.print(totals_line(view))
    if html is not None:
        console.print(f"wrote {escape(str(write_html(view, html)))}")
    if json_path is not None:
        console.print(f"wrote {escape(str(write_json(view, json_path)))}")


# -- compare -----------------------------------------------------------------------------------------------
@lab_app.command("compare")
@user_errors
def compare(models: str = typer.Option(..., help="Comma-separated: packaged aliases, model folders, run directories."),
            prompts: Optional[Path] = typer.Option(None, help="A file with a prompt (or question) column, and "
                                                   "optionally reference, category, system."),
            prompt: Optional[str] = typer.Option(None, help="One prompt instead of a file."),
            output: Optional[Path] = typer.Option(None, help="CSV: one answer column per model + length, tokens/s."),
            max_new_tokens: int = typer.Option(64, min=1),
            sample: bool = typer.Option(False, help="Sample (seeded) instead of greedy decoding."),
            seed: int = typer.Option(0),
            temperature: float = typer.Option(0.7, min=0.01),
            top_p: float = typer.Option(0.9, min=0.01, max=1.0),
            batch_size: int = typer.Option(8, min=1),
            device: Optional[str] = typer.Option(None, help="cpu, cuda or mps (default: auto)."),
            overwrite: bool = typer.Option(False, help="Replace an existing --output file.")):
    """The same prompts through each model, side by side (and how likely each finds the reference answers)."""
    from tunelab.io import check_output_file
    from tunelab.lab.compare import compare_models, parse_model_list, read_prompts, write_csv

    names = parse_model_list(models)
    if output is not None:
        check_output_file(output, overwrite, inputs=[prompts] if prompts else [])
    rows, prompt_column, reference_column = read_prompts(prompts, prompt)
    result = compare_models(names, rows, prompt_column, reference_column, max_new_tokens=max_new_tokens,
                            sample=sample, seed=seed, temperature=temperature, top_p=top_p,
                            batch_size=batch_size, device=device)
    side = Table(title=f"{len(rows)} prompts, {'sampled (seed ' + str(seed) + ')' if sample else 'greedy'}, "
                       f"at most {max_new_tokens} new tokens", show_lines=True)
    side.add_column("prompt", ratio=1)
    for m in result.models:
        side.add_column(escape(m.name), ratio=2)
    for i, text in enumerate(rows[prompt_column]):
        side.add_row(escape(_clip(str(text))), *(escape(_clip(m.answers[i])) for m in result.models))
    console.print(side)
    summary = Table(title="models")
    summary.add_column("model", no_wrap=True)
    for name in ("mean answer tokens", "tokens/s") + \
            (("mean reference log-lik / token",) if reference_column else ()):
        summary.add_column(name)
    for m in result.models:
        cells = [escape(m.name), f"{sum(m.answer_tokens) / max(len(m.answer_tokens), 1):.1f}",
                 f"{m.tokens_per_second:.1f}"]
        if reference_column:
            cells.append(f"{m.mean_reference_loglik:.3f}" if m.mean_reference_loglik is not None else "")
        summary.add_row(*cells)
    console.print(summary)
    for m in result.models:
        console.print(f"{escape(m.name)} was prompted with: {escape(m.prompting)}", soft_wrap=True)
    if reference_column:
        console.print(f"log-likelihood of the `{reference_column}` column given each prompt: higher means the model "
                      "finds the reference answer more likely (0 = certain)")
    if output is not None:
        console.print(f"wrote {escape(str(write_csv(result, output)))}")


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


# -- explain: one real training step, narrated ---------------------------------------------------------------
@lab_app.command("explain")
@user_errors
def explain(config: Path, output: Path = typer.Option(Path("explain"), help="Folder for explain.md and its plots."),
            step: Optional[int] = typer.Option(None, min=1, help="The optimizer step to explain (earlier ones run "
                                               "unobserved); default: the first with a learning rate above 0."),
            overwrite: bool = typer.Option(False, help="Replace an earlier explain.md in --output."),
            set_items: Optional[list[str]] = typer.Option(None, "--set")):
    """Run one real optimizer step of CONFIG's run and explain it: batch, loss, gradients, AdamW, LR schedule,
    memory and time."""
    from tunelab.errors import UserError
    from tunelab.io import check_output_file
    from tunelab.lab.explain import MARKDOWN, explain as explain_step, sections
    from tunelab.lab.template import load_view_config

    run_config = load_view_config(config, None, set_items)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder")
    check_output_file(output / MARKDOWN, overwrite, option="--output")
    explanation = explain_step(run_config, output, step, str(config), echo=lambda line: console.print(escape(line)))
    for section in sections(explanation):
        console.rule(f"[bold]{escape(section.title)}")
        for line in section.lines:
            console.print(escape(line), soft_wrap=True)
        for title, header, rows in section.tables:
            table = Table(title=escape(title))
            for name in header:
                table.add_column(escape(name))
            for row in rows:
                table.add_row(*(escape(cell) for cell in row))
            console.print(table)
        if section.image:
            console.print(f"[dim]plot: {escape(str(output / section.image))}[/]")
    console.rule()
    console.print("wrote " + ", ".join(escape(str(path)) for path in explanation.files))


# -- lengths (also `tunelab data lengths`) -----------------------------------------------------------------
@lab_app.command("lengths")
@user_errors
def lengths(config: Path, data: Optional[str] = typer.Option(None), png: Path = typer.Option(Path("token_lengths.png")),
            set_items: Optional[list[str]] = typer.Option(None, "--set")):
    """Token lengths of the task's model inputs: percentiles, truncation share, histogram PNG."""
    from tunelab.cli.data import lengths as data_lengths

    data_lengths(config, data, png, set_items)
