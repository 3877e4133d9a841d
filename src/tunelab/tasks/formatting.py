"""Turning conversations / prompt-completion pairs into token ids with loss masks.

Loss is computed only on what the model should learn to write: the assistant
turns (conversational) or the completion (prompt-completion). We render the
text, record the character spans to train on, then tokenize once with offsets
and label exactly the tokens that start inside those spans. This works with
any chat template, including ones without `{% generation %}` markers.
"""
from __future__ import annotations

from dataclasses import dataclass

from tunelab.data.collate import IGNORE_INDEX


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # [start, end) character ranges that carry loss


def render_conversation(messages: list[dict], tokenizer) -> Rendered:
    """Render with the model's chat template; spans = each assistant turn (content + end-of-turn)."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not upto.startswith(before):
            raise ValueError("the chat template renders a prefix differently from the whole conversation; "
                             "tunelab cannot locate the assistant turns")
        end = len(upto.rstrip("\n"))  # train the end-of-turn token, not the newline after it
        spans.append((len(before), end))
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return Rendered(text, spans)


def render_prompt_completion(prompt: str, completion: str, tokenizer) -> Rendered:
    eos = tokenizer.eos_token or ""
    text = prompt + completion + eos
    return Rendered(text, [(len(prompt), len(text))])


def tokenize_rendered(rendered: Rendered, tokenizer, max_length: int) -> dict:
    """Token ids and labels (IGNORE_INDEX outside spans), truncated on the right to max_length."""
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True,
                    truncation=True, max_length=max_length)
    labels = []
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        inside = any(s <= start < e for s, e in rendered.spans) and end > start
        labels.append(token_id if inside else IGNORE_INDEX)
    return {"input_ids": list(enc["input_ids"]), "labels": labels}


def prompt_of(messages: list[dict]) -> list[dict]:
    """The conversation up to (not including) the last assistant turn: what generation starts from."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return messages[:last]
