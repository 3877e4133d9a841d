"""Supervised fine-tuning for chat / domain QA.

Rows come as a `messages` list, as question/answer (+ optional category,
difficulty, system), or as prompt/completion. Two formats:
- conversational: the model's own chat template; loss on assistant turns only;
- prompt_completion: `prompt_template` + answer + EOS; loss on the answer only.
Per-category system prompts let one model serve several domains.
"""
from __future__ import annotations

import json
from typing import Literal

import pandas as pd
from pydantic import Field

from tunelab.config.schema import TaskConfig
from tunelab.data.validate import is_blank
from tunelab.errors import UserError
from tunelab.tasks.base import Fields, GenerativeTask
from tunelab.tasks.formatting import (
    Rendered, prompt_of, render_conversation, render_prompt_completion, tokenize_rendered,
)
from tunelab.data.collate import IGNORE_INDEX, CausalLMCollator


class SFTConfig(TaskConfig):
    name: Literal["sft"] = "sft"
    format: Literal["conversational", "prompt_completion"] = "conversational"
    system_prompt: str | None = None
    """System prompt for every conversation (None keeps the template's default)."""
    category_system_prompts: dict[str, str] = Field(default_factory=dict)
    """Per-category system prompts; a row's category picks one (falls back to system_prompt)."""
    prompt_template: str = "### Question:\n{question}\n\n### Answer:\n"
    """prompt_completion format: how a question becomes the prompt."""
    eval_max_rows: int | None = Field(0, ge=0)
    """After training, generate answers for this many held-out rows and score them (ROUGE against the
    reference answers, eval_predictions.jsonl); 0 = eval loss only, None = every held-out row."""


class SFTTask(GenerativeTask):
    name = "sft"
    config_class = SFTConfig
    fields = Fields(any_of=(("messages",), ("question", "answer"), ("prompt", "completion")),
                    optional=("category", "difficulty", "system"), targets=("answer", "completion"))
    description = "chat / instruction / domain-QA fine-tuning (loss on answers only)"
    options: SFTConfig

    # -- rows -> conversations ------------------------------------------------
    def system_for(self, row: pd.Series) -> str | None:
        if "system" in row and isinstance(row["system"], str) and row["system"].strip():
            return row["system"]
        category = str(row.get("category", "")).strip()
        return self.options.category_system_prompts.get(category, self.options.system_prompt)

    def conversation(self, row: pd.Series) -> list[dict]:
        """The full conversation for a row, ending with the assistant's answer."""
        if "messages" in row and not is_blank(row["messages"]):
            messages = _parse_messages(row["messages"], row.name)
        elif "question" in row and not is_blank(row.get("question")):
            messages = [{"role": "user", "content": str(row["question"])},
                        {"role": "assistant", "content": str(row.get("answer", ""))}]
        else:
            messages = [{"role": "user", "content": str(row["prompt"])},
                        {"role": "assistant", "content": str(row.get("completion", ""))}]
        system = self.system_for(row)
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}] + messages
        return messages

    def prompt_completion(self, row: pd.Series) -> tuple[str, str]:
        if "prompt" in row and not is_blank(row.get("prompt")):
            return str(row["prompt"]), str(row.get("completion", ""))
        messages = self.conversation(row)
        question = "\n".join(m["content"] for m in messages if m["role"] == "user")
        answer = messages[-1]["content"]
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        prompt = self.options.prompt_template.format(question=question, system=system, **_extra(row))
        return (system + "\n\n" + prompt if system else prompt), answer

    def render(self, row: pd.Series, tokenizer) -> Rendered:
        if self.options.format == "prompt_completion":
            return render_prompt_completion(*self.prompt_completion(row), tokenizer)
        self._require_chat_template(tokenizer, "task.format: prompt_completion")
        return render_conversation(self.conversation(row), tokenizer)

    def _require_chat_template(self, tokenizer, alternative: str) -> None:
        if not tokenizer.chat_template:
            raise UserError(f"model `{self.config.model.name_or_path}` has no chat template: set model.chat_template "
                            f"(e.g. `chatml`, `gemma`) or use {alternative}")

    def generation_prompt(self, row: pd.Series, tokenizer) -> str:
        """The text generation starts from: everything before the answer."""
        if self.options.format == "prompt_completion":
            return self.prompt_completion(row)[0]
        return tokenizer.apply_chat_template(prompt_of(self.conversation(row)), tokenize=False, add_generation_prompt=True)

    def references(self, row: pd.Series) -> list[str]:
        return [self.conversation(row)[-1]["content"]]

    def eval_generation_rows(self) -> int | None:
        return self.options.eval_max_rows

    # -- contract ---------------------------------------------------------------
    def texts_for_length(self, frame, tokenizer):
        return [self.render(row, tokenizer).text for _, row in frame.iterrows()]

    def encode(self, frame, tokenizer, max_length):
        examples = (tokenize_rendered(self.render(row, tokenizer), tokenizer, max_length) for _, row in frame.iterrows())
        return [e for e in examples if teaches(e)]

    def collate(self, tokenizer):
        return CausalLMCollator(tokenizer.pad_token_id)

    def has_labels(self, frame: pd.DataFrame) -> bool:
        return any(all(f in frame.columns for f in group) for group in self.fields.any_of)


def teaches(example: dict) -> bool:
    """False for an example whose answer was truncated away entirely: it has no token to learn from."""
    return any(label != IGNORE_INDEX for label in example["labels"])


def _extra(row: pd.Series) -> dict:
    return {k: v for k, v in row.items() if isinstance(k, str) and k not in ("question", "system")}


def _parse_messages(value, index) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"row {index + 1}: `messages` is not a JSON list of {{role, content}}") from None
    value = list(value)
    if not value or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise UserError(f"row {index + 1}: `messages` must be a list of {{role, content}} objects")
    if not any(m["role"] == "assistant" for m in value):
        raise UserError(f"row {index + 1}: `messages` has no assistant turn to learn from")
    return [{"role": m["role"], "content": str(m["content"])} for m in value]
