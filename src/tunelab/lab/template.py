"""The template and loss-mask view: a run's training examples exactly as the Trainer receives them.

Rows go through the same path as `tunelab train` (config -> load_splits -> task.fit -> task.encode_train ->
truncation at train.max_length), then every token is shown with its id and whether the loss falls on it
(label != -100, tunelab.data.collate.IGNORE_INDEX). Classification and preference examples have one label per
sequence instead: the view shows the model's input and the class it is taught.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.collate import IGNORE_INDEX
from tunelab.errors import UserError
from tunelab.lab.tokens import TokenPiece, token_pieces


@dataclass
class ViewedExample:
    row: int                 # 1-based row of the data file
    variant: str             # "" | "A/B swapped" (training augmentation) | "response A" / "response B"
    pieces: list[TokenPiece]
    labels: list[int] | None  # per-token labels (causal LM), else None
    target: str | None       # the class a classification/preference example is taught, else None
    tokens_before_truncation: int
    note: str = ""

    @property
    def trained(self) -> list[bool]:
        """Per token: does the loss fall on it? (every token of a classifier's input feeds its one label)"""
        if self.labels is None:
            return [False] * len(self.pieces)
        return [label != IGNORE_INDEX for label in self.labels]

    @property
    def trained_tokens(self) -> int:
        return sum(self.trained)

    @property
    def truncated_tokens(self) -> int:
        return max(0, self.tokens_before_truncation - len(self.pieces))

    def to_dict(self) -> dict:
        record = {"row": self.row, "variant": self.variant, "text": "".join(p.text for p in self.pieces),
                  "input_ids": [p.id for p in self.pieces], "tokens": [p.text for p in self.pieces]}
        if self.labels is not None:
            record.update(labels=self.labels, mask=[int(t) for t in self.trained])
        if self.target is not None:
            record["label"] = self.target
        record.update(tokens_before_truncation=self.tokens_before_truncation, truncated_tokens=self.truncated_tokens)
        if self.note:
            record["note"] = self.note
        return record


@dataclass
class TemplateView:
    config_path: str
    task: str
    model: str
    rendering: str           # how rows become text, in words
    max_length: int
    examples: list[ViewedExample] = field(default_factory=list)

    @property
    def token_level(self) -> bool:
        """True when the loss falls on tokens (causal LM); False for one label per example (classifiers)."""
        return any(e.labels is not None for e in self.examples)

    def totals(self) -> dict:
        token_level = [e for e in self.examples if e.labels is not None]
        tokens = sum(len(e.pieces) for e in token_level)
        trained = sum(e.trained_tokens for e in token_level)
        return {"examples": len(self.examples), "tokens": sum(len(e.pieces) for e in self.examples),
                "trained_tokens": trained, "masked_tokens": tokens - trained,
                "trained_share": round(trained / tokens, 4) if tokens else None,
                "truncated_examples": sum(e.truncated_tokens > 0 for e in self.examples),
                "dropped_examples": sum(e.note.startswith("dropped") for e in self.examples)}


def template_view(config, rows: int = 3, config_path: str = "") -> TemplateView:
    """The first `rows` training rows of `config`'s run, encoded exactly as training encodes them."""
    from tunelab.data.pipeline import load_splits
    from tunelab.models import load_tokenizer
    from tunelab.tasks import get_task

    if rows < 1:
        raise UserError("--rows must be at least 1")
    task = get_task(config.task.name)(config)
    tokenizer = load_tokenizer(config.model)
    splits = load_splits(config, task, tokenizer)
    task.fit(splits.train)
    max_length = config.train.max_length
    view = TemplateView(config_path=config_path, task=task.name, model=config.model.name_or_path,
                        rendering=describe_rendering(task, tokenizer), max_length=max_length)
    for index in splits.train.index[:rows]:
        frame = splits.train.loc[[index]]
        before = task.input_lengths(frame, tokenizer)[0]
        examples = task.encode_train(frame, tokenizer, max_length)
        if not examples:  # training drops it: show what was left of it (right-truncated, as encode truncates)
            whole = task.encode_train(frame, tokenizer, max(before, max_length))
            ids, labels = (whole[0]["input_ids"][:max_length], whole[0]["labels"][:max_length]) if whole else ([], [])
            view.examples.append(ViewedExample(int(index) + 1, "", token_pieces(tokenizer, ids), list(labels), None,
                                               before, note=f"dropped by training: no answer token left within "
                                                            f"max_length={max_length}"))
        for n, example in enumerate(examples):
            view.examples.extend(_viewed(task, tokenizer, int(index) + 1, example, before, swapped=n > 0))
    return view


def _viewed(task, tokenizer, row: int, example: dict, before: int, swapped: bool) -> list[ViewedExample]:
    variant = "A/B swapped (training augmentation)" if swapped else ""
    labels = example.get("labels")
    if isinstance(labels, list):  # causal LM: one label per token
        return [ViewedExample(row, variant, token_pieces(tokenizer, example["input_ids"]), list(labels), None, before)]
    classes = getattr(task, "classes", None) or []
    target = classes[labels] if labels is not None and 0 <= labels < len(classes) else None
    if "input_ids_b" in example:  # a reward model scores the two responses as two sequences
        # The task counts only the longer sequence before truncation: say so once, not per sequence.
        note = f"the longer response had {before} tokens before truncation" if before > max(
            len(example["input_ids"]), len(example["input_ids_b"])) else ""
        return [ViewedExample(row, f"{variant + ', ' if variant else ''}response {side}",
                              token_pieces(tokenizer, example[key]), None, target, len(example[key]), note=note)
                for side, key in (("A", "input_ids"), ("B", "input_ids_b"))]
    return [ViewedExample(row, variant, token_pieces(tokenizer, example["input_ids"]), None, target, before)]


def describe_rendering(task, tokenizer) -> str:
    """How this task turns a row into model input, in one line."""
    options = task.options
    parts = [f"task {task.name}"]
    fmt = getattr(options, "format", None)
    if fmt:
        parts.append(f"format {fmt}")
    if task.head == "causal_lm":
        if fmt == "prompt_completion":
            parts.append("prompt template + answer + EOS; loss on the answer")
        else:
            parts.append("the model's chat template; loss on the assistant turns" if tokenizer.chat_template
                         else "no chat template")
        system = getattr(options, "system_prompt", None)
        if system:
            parts.append(f"system prompt {system!r}")
        per_category = getattr(options, "category_system_prompts", None)
        if per_category:
            parts.append(f"{len(per_category)} per-category system prompts")
    else:
        template = getattr(options, "template", None)
        if template:
            parts.append(f"input template {template!r}")
        parts.append("one label per example (sequence classification)")
    return "; ".join(parts)


# -- output ----------------------------------------------------------------------------------------------
def write_json(view: TemplateView, path: str | Path) -> Path:
    from tunelab.io import atomic_write_json

    return atomic_write_json(path, {"config": view.config_path, "task": view.task, "model": view.model,
                                    "rendering": view.rendering, "max_length": view.max_length,
                                    "totals": view.totals(), "examples": [e.to_dict() for e in view.examples]})


HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 2em; }
.meta { color: #555; font-size: .9em; }
.tokens { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .92em; line-height: 1.9;
          white-space: pre-wrap; word-break: break-all; border: 1px solid #ddd; padding: .8em; border-radius: 6px; }
.tok { border-right: 1px solid #bbb; padding: 1px 0; }
.tok:hover { outline: 2px solid #333; }
.masked { color: #888; background: #f3f3f3; } .masked.odd { background: #e6e6e6; }
.trained { color: #0b3d0b; background: #a8e6a1; } .trained.odd { background: #7fd477; }
.input { color: #0b2a4d; background: #cfe3f7; } .input.odd { background: #a9cdf0; }
.special { font-style: italic; font-weight: 600; }
.nl { color: #bbb; }
.legend span { padding: 2px 6px; margin-right: 1em; }
"""


LEGEND_TOKENS = ('<span class="tok trained">trained (label = the token id)</span>'
                 '<span class="tok masked">masked (label -100: context only)</span>')
LEGEND_SEQUENCE = ('<span class="tok input">model input</span> one label per example: the loss falls on the '
                   'class it is taught, not on tokens.')


def render_html(view: TemplateView) -> str:
    """A self-contained page (no scripts, no external files): token boundaries, ids on hover, trained tokens green."""
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>tunelab template view: {html.escape(view.config_path or view.task)}</title>",
           f"<style>{HTML_STYLE}</style></head><body>",
           f"<h1>What training sees: {html.escape(view.config_path or view.task)}</h1>",
           f'<p class="meta">model {html.escape(view.model)} · {html.escape(view.rendering)} · '
           f"max_length {view.max_length}</p>",
           f'<p class="meta">{html.escape(totals_line(view))}</p>',
           f'<p class="legend">{LEGEND_TOKENS if view.token_level else LEGEND_SEQUENCE} hover a token for its id</p>']
    for example in view.examples:
        out.append(f"<h2>row {example.row}{' · ' + html.escape(example.variant) if example.variant else ''}</h2>")
        out.append(f'<p class="meta">{html.escape(example_summary(example))}</p>')
        spans = []
        for piece, trained in zip(example.pieces, example.trained):
            kind = "input" if example.labels is None else ("trained" if trained else "masked")
            classes = ["tok", kind] + (["odd"] if piece.position % 2 else []) \
                + (["special"] if piece.special else [])
            label = "trained" if trained else ("label -100" if example.labels is not None else "input")
            title = f"#{piece.position} id {piece.id} · {piece.token} · {label}"
            text = html.escape(piece.text).replace("\n", '<span class="nl">↵</span>\n')
            spans.append(f'<span class="{" ".join(classes)}" title="{html.escape(title)}" '
                         f'data-id="{piece.id}">{text}</span>')
        out.append(f'<div class="tokens">{"".join(spans)}</div>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_html(view: TemplateView, path: str | Path) -> Path:
    from tunelab.io import atomic_write_text

    return atomic_write_text(path, render_html(view))


def totals_line(view: TemplateView) -> str:
    """Trained vs masked tokens (or examples and labels for a classifier) and truncation, in one line."""
    totals = view.totals()
    line = f"{totals['examples']} examples, {totals['tokens']} tokens"
    if view.token_level:
        line += (f": {totals['trained_tokens']} trained, {totals['masked_tokens']} masked "
                 f"({100 * (totals['trained_share'] or 0):.1f}% trained)")
    else:
        line += ": one label per example, every input token feeds it"
    line += f"; {totals['truncated_examples']} truncated at max_length={view.max_length}"
    if totals["dropped_examples"]:
        line += f", {totals['dropped_examples']} of them dropped by training (no answer token left)"
    return line


def example_summary(example: ViewedExample) -> str:
    parts = [f"{len(example.pieces)} tokens"]
    if example.labels is not None:
        parts.append(f"{example.trained_tokens} trained, {len(example.pieces) - example.trained_tokens} masked")
    if example.target is not None:
        parts.append(f"label: {example.target}")
    if example.truncated_tokens:
        parts.append(f"truncated: {example.truncated_tokens} of {example.tokens_before_truncation} tokens cut")
    if example.note:
        parts.append(example.note)
    return ", ".join(parts)


def trained_runs(example: ViewedExample) -> list[list[int]]:
    """Positions of each maximal run of consecutive trained tokens."""
    runs: list[list[int]] = []
    for position, trained in enumerate(example.trained):
        if trained:
            if runs and runs[-1][-1] == position - 1:
                runs[-1].append(position)
            else:
                runs.append([position])
    return runs


def load_view_config(path: str | Path, data: str | None = None, set_items: list[str] | None = None):
    """The config as `tunelab train` would resolve it (presets, --set overrides)."""
    from tunelab.config import load_config, parse_set_options

    if not Path(path).is_file():
        raise UserError(f"config {path} not found")
    return load_config(path, {"data.train_path": data, **parse_set_options(set_items)})

