"""Dialogue summarization: dialogue -> summary, trained as SFT, measured with ROUGE on real generations.

Rows need `dialogue` and `summary` (or `summary1`; evaluation files may carry
`summary1..summaryN`, all used as references). Two prompt formats:
- `chat`: the model's chat template; the user turn is instruction + dialogue;
- `instruction`: `### Instruction / ### Input / ### Response` text + EOS.
The loss covers the summary only.

Instruction augmentation: `instructions` lists several phrasings of the
request. Training rows use all of them (`augmentation: expand`, one example
per phrasing), one picked per row (`sample`, seeded by train.seed and the
dialogue, so it is stable across runs), or only the first (`none`).
Generation (eval, predict) always uses the first phrasing, so scores are
comparable between runs.

A dialogue too long for train.max_length is cut (at a token boundary) so the
summary still fits: the summary is what the model learns from.
"""
from __future__ import annotations

import random
import re
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator

from tunelab.config.schema import TaskConfig
from tunelab.errors import UserError
from tunelab.tasks.base import Fields
from tunelab.tasks.formatting import Rendered, render_conversation, render_prompt_completion, tokenize_rendered
from tunelab.data.validate import is_blank
from tunelab.tasks.sft import SFTTask, teaches

MAX_NUMBERED_REFERENCES = 10
_NUMBERED_REFERENCE = re.compile(r"^summary(\d+)$")

DEFAULT_INSTRUCTIONS = [
    "Summarize the following dialogue.",
    "Write a short summary of this conversation.",
    "Briefly describe what happens in the dialogue below.",
    "Read the conversation and summarize it in one or two sentences.",
]


class SummarizeConfig(TaskConfig):
    name: Literal["summarize"] = "summarize"
    format: Literal["chat", "instruction"] = "chat"
    """`chat`: the model's chat template; `instruction`: ### Instruction / ### Input / ### Response."""
    instructions: list[str] = Field(default_factory=lambda: list(DEFAULT_INSTRUCTIONS), min_length=1)
    """Phrasings of the request; the first one is used for generation."""
    augmentation: Literal["sample", "expand", "none"] = "sample"
    """Training: one random phrasing per row (seeded), every phrasing per row, or only the first."""
    system_prompt: str | None = None
    """chat: system prompt (None keeps the template's default); instruction: text put before the prompt."""
    instruction_template: str = "### Instruction:\n{instruction}\n\n### Input:\n{dialogue}\n\n### Response:\n"
    eval_generation_every: int | None = Field(None, ge=1)
    """Generate summaries for a sample of eval rows every N steps and log eval_rouge* (and pick the best
    checkpoint by eval_rougeL). None: only the loss is tracked during training."""
    eval_generation_samples: int = Field(16, ge=1)
    """How many eval rows the in-training ROUGE uses (the same rows every time)."""
    eval_max_rows: int | None = Field(200, ge=1)
    """Final ROUGE after training generates for at most this many eval rows (None = all)."""
    rouge_cjk: Literal["char", "word"] = "char"
    """ROUGE tokens for Hangul/CJK: per character (default, robust to Korean particles) or per word."""

    @field_validator("instruction_template")
    @classmethod
    def _has_dialogue_slot(cls, value: str) -> str:
        if "{dialogue}" not in value:
            raise ValueError("must contain `{dialogue}` (and usually `{instruction}`)")
        return value

    @field_validator("instructions")
    @classmethod
    def _no_blank_instructions(cls, value: list[str]) -> list[str]:
        if any(not s.strip() for s in value):
            raise ValueError("instructions must not be empty strings")
        return value


class SummarizeTask(SFTTask):
    name = "summarize"
    config_class = SummarizeConfig
    fields = Fields(any_of=(("dialogue", "summary"), ("dialogue", "summary1")),
                    optional=tuple(f"summary{i}" for i in range(1, MAX_NUMBERED_REFERENCES + 1)),
                    targets=("summary",) + tuple(f"summary{i}" for i in range(1, MAX_NUMBERED_REFERENCES + 1)))
    description = "dialogue -> summary (instruction or chat format, instruction augmentation, ROUGE)"
    options: SummarizeConfig

    # -- rows -> prompts ----------------------------------------------------------
    def references(self, row: pd.Series) -> list[str]:
        """Every reference summary of a row: `summary` then summary1..N in numeric order (the first is the
        training target)."""
        numbered = sorted((int(m.group(1)), k) for k in row.index if isinstance(k, str) and (m := _NUMBERED_REFERENCE.match(k)))
        refs = [str(row[k]).strip() for k in ["summary"] + [k for _, k in numbered] if k in row and not is_blank(row[k])]
        if not refs:
            raise UserError(f"row {_row_number(row)}: no reference summary (`summary` or `summary1`) to learn from or score against")
        return refs

    def instructions_for(self, row: pd.Series) -> list[str]:
        """The phrasings a training row is rendered with (see `augmentation`)."""
        phrasings = self.options.instructions
        if self.options.augmentation == "expand":
            return list(phrasings)
        if self.options.augmentation == "sample":
            # Seeded by the row's own text: the same row gets the same phrasing whatever the order or split.
            return [random.Random(f"{self.config.train.seed}|{row['dialogue']}").choice(phrasings)]
        return [phrasings[0]]

    def conversation(self, row: pd.Series, instruction: str | None = None) -> list[dict]:
        instruction = instruction or self.options.instructions[0]
        messages = [{"role": "user", "content": f"{instruction}\n\n{str(row['dialogue']).strip()}"},
                    {"role": "assistant", "content": self._target(row)}]
        if self.options.system_prompt:
            messages.insert(0, {"role": "system", "content": self.options.system_prompt})
        return messages

    def prompt_completion(self, row: pd.Series, instruction: str | None = None) -> tuple[str, str]:
        instruction = instruction or self.options.instructions[0]
        prompt = self.options.instruction_template.format(instruction=instruction, dialogue=str(row["dialogue"]).strip())
        if self.options.system_prompt:
            prompt = self.options.system_prompt + "\n\n" + prompt
        return prompt, self._target(row)

    def _target(self, row: pd.Series) -> str:
        # Prediction files may carry no summary at all; the prompt is still needed.
        has_reference = any(not is_blank(row.get(k)) for k in ("summary", "summary1"))
        return self.reference(row) if has_reference else ""

    def render(self, row: pd.Series, tokenizer, instruction: str | None = None) -> Rendered:
        if self.options.format == "instruction":
            return render_prompt_completion(*self.prompt_completion(row, instruction), tokenizer)
        self._require_chat_template(tokenizer, "task.format: instruction")
        return render_conversation(self.conversation(row, instruction), tokenizer)

    def generation_prompt(self, row: pd.Series, tokenizer) -> str:
        if self.options.format == "instruction":
            return self.prompt_completion(row)[0]
        self._require_chat_template(tokenizer, "task.format: instruction")
        return tokenizer.apply_chat_template(self.conversation(row)[:-1], tokenize=False, add_generation_prompt=True)

    # -- contract -------------------------------------------------------------------
    def encode(self, frame, tokenizer, max_length):
        examples = []
        for _, row in frame.iterrows():
            for instruction in self.instructions_for(row):
                rendered = self._render_within(row, tokenizer, instruction, max_length)
                example = tokenize_rendered(rendered, tokenizer, max_length)
                if teaches(example):
                    examples.append(example)
        return examples

    def _render_within(self, row: pd.Series, tokenizer, instruction: str, max_length: int) -> Rendered:
        """Render; if too long, cut the dialogue (not the summary) at a token boundary so the summary fits."""
        rendered = self.render(row, tokenizer, instruction)
        for _ in range(3):  # re-tokenizing around the cut can shift a token or two; converge quickly
            excess = len(tokenizer(rendered.text, add_special_tokens=False)["input_ids"]) - max_length
            if excess <= 0:
                return rendered
            dialogue = str(row["dialogue"]).strip()
            enc = tokenizer(dialogue, add_special_tokens=False, return_offsets_mapping=True)
            keep = len(enc["input_ids"]) - excess - 2
            if keep < 8:
                return rendered  # the summary alone nearly fills max_length: right-truncation in tokenize_rendered
            row = row.copy()
            row["dialogue"] = dialogue[: enc["offset_mapping"][keep - 1][1]]
            rendered = self.render(row, tokenizer, instruction)
        return rendered

    # -- generation and ROUGE ---------------------------------------------------------
    @property
    def rouge_cjk(self) -> str:
        return self.options.rouge_cjk

    def eval_generation_rows(self) -> int | None:
        return self.options.eval_max_rows

    def in_training_generation(self) -> tuple[int, int] | None:
        every = self.options.eval_generation_every
        return (every, self.options.eval_generation_samples) if every else None

    def metric_for_best_model(self) -> tuple[str, bool]:
        return ("rougeL", True) if self.options.eval_generation_every else ("loss", False)


def _row_number(row: pd.Series) -> str:
    return str(int(row.name) + 1) if pd.api.types.is_integer(row.name) else str(row.name)
