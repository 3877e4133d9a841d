"""The task plug-in contract.

A task answers five questions and nothing else:
1. data:    which fields it needs (`fields`) and how a row becomes a model example (`prepare`, `encode`);
2. head:    which model head it trains (`head`, `head_kwargs`);
3. loss:    its loss, if not the head's default (`compute_loss`);
4. metrics: what it measures on held-out data (`trainer_metrics` from logits, `evaluate` from predictions);
5. output:  how predictions are made and written (`predict`, `write_predictions`).

Training, run directories, checkpoints, logging and the CLI never ask which
task they run. Fields are *logical* names (e.g. `question`); the user's
`data.columns` maps them to their file's column names before the task sees
the frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import pandas as pd

from tunelab.config.schema import RunConfig, TaskConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Head = Literal["causal_lm", "sequence_classification"]


@dataclass(frozen=True)
class Fields:
    """Logical fields a task reads. `any_of` lists alternatives: one group must be fully present."""

    any_of: tuple[tuple[str, ...], ...]
    optional: tuple[str, ...] = ()

    def all_names(self) -> set[str]:
        return {f for group in self.any_of for f in group} | set(self.optional)


class Task:
    name: ClassVar[str]
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    head: ClassVar[Head] = "causal_lm"
    fields: ClassVar[Fields]
    description: ClassVar[str] = ""
    stratify_field: ClassVar[str | None] = None
    """Field to stratify the train/eval split by when `data.stratify_by` names no column of the data."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.options = config.task  # the task's own (validated) config section

    # -- 1. data ---------------------------------------------------------
    def prepare(self, frame: pd.DataFrame, split: str) -> pd.DataFrame:
        """Derive task columns from mapped fields (called for train, eval and predict data).

        `split` is "train", "eval" or "predict". Default: unchanged.
        """
        return frame

    def fit(self, train: pd.DataFrame) -> None:
        """Learn what the task needs from training rows (e.g. the label set). Default: nothing."""

    def state(self) -> dict[str, Any]:
        """What `fit` learned, JSON-serialisable; saved in the run dir and restored by `load_state`."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def texts_for_length(self, frame: pd.DataFrame, tokenizer: "PreTrainedTokenizerBase") -> list[str]:
        """The full model input per row, as text: used for length reports and overlong checks."""
        raise NotImplementedError

    def encode(self, frame: pd.DataFrame, tokenizer: "PreTrainedTokenizerBase", max_length: int) -> list[dict]:
        """Rows -> tokenized examples (lists of ints: input_ids, and labels / label)."""
        raise NotImplementedError

    def encode_train(self, frame: pd.DataFrame, tokenizer: "PreTrainedTokenizerBase", max_length: int) -> list[dict]:
        """Training examples; a task may augment here (e.g. A/B swaps). Default: `encode`."""
        return self.encode(frame, tokenizer, max_length)

    def collate(self, tokenizer: "PreTrainedTokenizerBase") -> Callable[[list[dict]], dict]:
        """The batch collator for `encode`'s examples."""
        raise NotImplementedError

    # -- 2. head / 3. loss -----------------------------------------------
    def head_kwargs(self) -> dict[str, Any]:
        """Extra `from_pretrained` kwargs for the head (e.g. num_labels, id2label)."""
        return {}

    def lora_modules_to_save(self) -> list[str] | None:
        """Modules trained in full next to LoRA and saved with the adapter (e.g. the score head)."""
        return None

    compute_loss: ClassVar[Callable | None] = None
    """A `Trainer(compute_loss_func=...)` callable, or None for the head's own loss."""

    # -- 4. metrics ------------------------------------------------------
    def trainer_metrics(self) -> Callable | None:
        """`compute_metrics` for the Trainer's evaluation loop (logit-based tasks), or None."""
        return None

    def metric_for_best_model(self) -> tuple[str, bool]:
        """(metric name as the Trainer logs it without `eval_`, greater_is_better)."""
        return "loss", False

    def callbacks(self, tokenizer, eval_frame: pd.DataFrame) -> list:
        """Extra TrainerCallbacks (e.g. generation metrics during training). Default: none."""
        return []

    def evaluate(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", frame: pd.DataFrame) -> dict[str, float]:
        """Task metrics on labelled rows, from real predictions. Default: none beyond the loss."""
        return {}

    # -- 5. predictions --------------------------------------------------
    def predict(self, model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", frame: pd.DataFrame) -> pd.DataFrame:
        """One output row per input row."""
        raise NotImplementedError

    output_formats: ClassVar[tuple[str, ...]] = ("jsonl", "csv")
    """Formats `write_predictions` accepts; the first is the default."""

    def write_predictions(self, predictions: pd.DataFrame, path: Path, fmt: str | None = None) -> Path:
        """Write predictions atomically as JSON lines or CSV; tasks add their submission formats on top."""
        from tunelab.errors import UserError, did_you_mean
        from tunelab.io import atomic_path

        fmt = fmt or self.output_formats[0]
        if fmt not in ("jsonl", "csv"):
            raise UserError(f"unknown predictions format `{fmt}` for {self.name}{did_you_mean(fmt, self.output_formats)}; "
                            f"use one of: {', '.join(self.output_formats)}")
        with atomic_path(path) as tmp:
            if fmt == "csv":
                predictions.to_csv(tmp, index=False)
            else:
                predictions.to_json(tmp, orient="records", lines=True, force_ascii=False)
        return Path(path)


class SequenceClassificationTask(Task):
    """Shared head plumbing for tasks that predict one of `self.classes` per row (classify, preference).

    Subclasses set `self.classes` (in `__init__`/`fit`/`load_state`) and implement `predict_proba`
    and `predictions_frame`.
    """

    head = "sequence_classification"
    classes: list[str]

    @property
    def label2id(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def collate(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def head_kwargs(self) -> dict[str, Any]:
        return {"num_labels": len(self.classes), "id2label": dict(enumerate(self.classes)),
                "label2id": self.label2id, "problem_type": "single_label_classification"}

    def lora_modules_to_save(self) -> list[str]:
        # The freshly initialised head must train in full and be saved with the adapter
        # (`classifier` in BERT-style encoders, `score` in decoder LLMs).
        return ["classifier", "score"]

    def predict_proba(self, model, tokenizer, frame: pd.DataFrame):
        raise NotImplementedError

    def predictions_frame(self, frame: pd.DataFrame, probs) -> pd.DataFrame:
        raise NotImplementedError

    def predict(self, model, tokenizer, frame):
        return self.predictions_frame(frame, self.predict_proba(model, tokenizer, frame))
