"""Named prompt templates: how a row's input fields become one model input text.

Built-in:
- `basic`:       the field values, one per line (plain concatenation; good for encoders);
- `detailed`:    each value labelled with its field name ("Question text: ..."), for LLMs;
- `instruction`: an instruction followed by the labelled fields, wrapped in the model's chat
                 template when it has one (instruct models), else ending in "Answer:".
Users add their own as format strings in the task config:
    templates: {short: "Q: {QuestionText} | A: {MC_Answer} | {StudentExplanation}"}
    template: short
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Callable, Mapping

from tunelab.errors import UserError, did_you_mean


@dataclass(frozen=True)
class TemplateContext:
    """What a template may use besides the row: the input fields in order, labels for them, the instruction."""

    fields: tuple[str, ...]
    field_labels: Mapping[str, str] = field(default_factory=dict)
    instruction: str = ""

    def label(self, name: str) -> str:
        return self.field_labels.get(name) or humanize(name)


Template = Callable[[Mapping[str, str], TemplateContext, object], str]
_BUILTIN: dict[str, Template] = {}


def register_template(name: str):
    def decorate(fn: Template) -> Template:
        _BUILTIN[name] = fn
        return fn
    return decorate


def humanize(name: str) -> str:
    """`QuestionText` / `question_text` -> `Question text`."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ").strip()
    return spaced[:1].upper() + spaced[1:].lower()


@register_template("basic")
def basic(values, ctx, tokenizer=None) -> str:
    return "\n".join(values[f] for f in ctx.fields if values[f])


@register_template("detailed")
def detailed(values, ctx, tokenizer=None) -> str:
    return "\n".join(f"{ctx.label(f)}: {values[f]}" for f in ctx.fields)


@register_template("instruction")
def instruction(values, ctx, tokenizer=None) -> str:
    body = (ctx.instruction.strip() + "\n\n" if ctx.instruction.strip() else "") + detailed(values, ctx)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                             add_generation_prompt=True)
    return body + "\nAnswer:"


def builtin_names() -> list[str]:
    return sorted(_BUILTIN)


def format_string_template(name: str, text: str) -> Template:
    """A user template: `str.format` fields are the row's (mapped) field names."""
    wanted = [f for _, f, _, _ in string.Formatter().parse(text) if f]

    def render(values, ctx, tokenizer=None) -> str:
        missing = [f for f in wanted if f not in values]
        if missing:
            raise UserError(f"task.templates.{name}: field `{{{missing[0]}}}` is not in the data"
                            f"{did_you_mean(missing[0], values)}; fields are: {', '.join(sorted(values))}")
        return text.format_map(dict(values))

    render.fields = tuple(wanted)  # type: ignore[attr-defined]
    return render


def get_template(name: str, custom: Mapping[str, str] | None = None) -> Template:
    custom = custom or {}
    if name in custom:
        return format_string_template(name, custom[name])
    if name in _BUILTIN:
        return _BUILTIN[name]
    choices = builtin_names() + sorted(custom)
    raise UserError(f"unknown template `{name}`{did_you_mean(name, choices)}; available: {', '.join(choices)} "
                    "(add your own under task.templates)")


def check_format_string(name: str, text: str) -> None:
    """Fail early (at config time) on a malformed format string."""
    try:
        list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"templates.{name}: not a valid format string ({exc})") from None
