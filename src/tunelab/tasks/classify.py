"""Text classification with encoder or decoder backbones (sequence-classification head).

Inputs come from one or several fields rendered by a named prompt template
(`tasks/templates.py`); the label field is `label` (map yours with
`data.columns.label`). An optional data processor (e.g. `map_misconception`)
derives the label and extra input fields. Metrics: accuracy, macro-F1, log
loss, MAP@k. Predictions: top-k labels with probabilities, written as a
generic CSV or a Kaggle MAP submission.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from tunelab.config.schema import TaskConfig
from tunelab.data.validate import is_missing
from tunelab.errors import UserError, did_you_mean
from tunelab.tasks.base import Fields, SequenceClassificationTask
from tunelab.tasks.map_misconception import PROCESSORS
from tunelab.tasks.templates import TemplateContext, builtin_names, check_format_string, get_template

LABEL = "label"


class ClassifyConfig(TaskConfig):
    name: Literal["classify"] = "classify"
    text_fields: list[str] | None = None
    """Input fields, in prompt order (default: `text`, or the processor's fields)."""
    template: str = "basic"
    """`basic`, `detailed`, `instruction`, or a name from `templates`."""
    templates: dict[str, str] = Field(default_factory=dict)
    """Your own templates: name -> format string with {field} placeholders."""
    instruction: str = "Classify the following text into one of the known categories."
    field_labels: dict[str, str] = Field(default_factory=dict)
    """How `detailed`/`instruction` name each field (default: the field name, humanized)."""
    labels: list[str] = Field(default_factory=list)
    """Fixed label set/order (default: the sorted labels seen in training)."""
    processor: str | None = None
    """A data processor (`map_misconception`) that derives labels and features."""
    id_field: str | None = None
    """Row id field copied to predictions (default `id`, or the processor's, e.g. `row_id`)."""
    top_k: int = Field(3, ge=1)
    """k of MAP@k and the number of labels per prediction."""
    unknown_labels: Literal["error", "skip"] = "error"
    """Eval rows whose label never occurs in training: stop with an error, or leave them out of metrics."""
    output_format: Literal["csv", "map", "jsonl"] = "csv"
    """Predictions file: generic CSV (id, prediction, top-k as a JSON list, a probability per class), Kaggle
    MAP submission (labels space-separated, so labels must not contain spaces), or JSON lines."""
    predict_batch_size: int = Field(32, ge=1)
    calibrate: bool = True
    """Temperature scaling: after training, fit one temperature on the held-out rows (minimum eval log loss)
    and apply it to every prediction of the run."""
    head_init: Literal["probe", "random"] = "probe"
    """`probe`: before fine-tuning, fit the fresh head as a logistic regression on the backbone's frozen pooled
    features (LP-FT; for a decoder LLM, its state at the last real token, where its head reads); `random`:
    transformers' init."""
    baseline: bool = True
    """Fit a TF-IDF + logistic regression baseline on the same training rows and report it beside the model
    (`baseline_*` in metrics.json; saved as baseline.npz for `tunelab ensemble RUN baseline:RUN`)."""

    @model_validator(mode="after")
    def _check_names(self) -> "ClassifyConfig":
        if self.processor is not None and self.processor not in PROCESSORS:
            raise ValueError(f"unknown processor `{self.processor}`{did_you_mean(self.processor, PROCESSORS)}; "
                             f"available: {', '.join(PROCESSORS)}")
        for name, text in self.templates.items():
            check_format_string(name, text)
        if self.template not in self.templates and self.template not in builtin_names():
            choices = builtin_names() + sorted(self.templates)
            raise ValueError(f"unknown template `{self.template}`{did_you_mean(self.template, choices)}; "
                             f"available: {', '.join(choices)}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels: each label must appear once")
        return self


class ClassifyTask(SequenceClassificationTask):
    name = "classify"
    config_class = ClassifyConfig
    fields = Fields(any_of=(("text", LABEL),), optional=("id",))
    description = "text classification (encoders or LLMs + classification head), MAP@k, Kaggle MAP submissions"
    output_formats = ("csv", "map", "jsonl")
    options: ClassifyConfig

    def __init__(self, config):
        super().__init__(config)
        opts = self.options
        self.processor = PROCESSORS[opts.processor]() if opts.processor else None
        default_fields = list(self.processor.text_fields) if self.processor else ["text"]
        self.text_fields = list(opts.text_fields or default_fields)
        self.id_field = opts.id_field or (self.processor.id_field if self.processor else "id")
        self.template = get_template(opts.template, opts.templates)
        self.context = TemplateContext(tuple(self.text_fields), opts.field_labels, opts.instruction)
        # Fields the data must carry: the processor's raw inputs, or the template's inputs.
        raw_inputs = list(self.processor.input_fields) if self.processor else self.text_fields
        optional = [self.id_field] + list(self.processor.optional_fields if self.processor else [])
        label_sources = (LABEL,) + (tuple(self.processor.label_fields) if self.processor else ())
        self.fields = Fields(any_of=(tuple(dict.fromkeys(raw_inputs + [LABEL])),),
                             optional=tuple(f for f in dict.fromkeys(optional) if f not in raw_inputs),
                             targets=label_sources)
        self.classes: list[str] = list(opts.labels)
        self.label_counts: dict[str, int] = {}

    # -- data -----------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame, split: str) -> pd.DataFrame:
        if self.processor:
            frame = self.processor.prepare(frame, split)
        if LABEL in frame.columns:
            frame = frame.copy()
            # Labels compare as stripped text (`" pets"` == `"pets"`); missing stays missing for `clean` to report.
            frame[LABEL] = frame[LABEL].map(lambda v: None if is_missing(v) else str(v).strip())
        return frame

    def fit(self, train: pd.DataFrame) -> None:
        if self.processor:
            self.processor.fit(train)
        seen = train[LABEL].astype(str)
        if self.options.labels:
            extra = sorted(set(seen) - set(self.options.labels))
            if extra:
                row = int(train.index[seen == extra[0]][0]) + 1
                raise UserError(f"training data row {row}: label `{extra[0]}` is not in task.labels"
                                f"{did_you_mean(extra[0], self.options.labels)}")
        else:
            self.classes = sorted(set(seen))
        if len(self.classes) < 2:
            raise UserError(f"classification needs at least 2 labels; the training data has only "
                            f"{', '.join(map(repr, self.classes)) or 'none'}")
        if self.options.output_format == "map":
            check_map_labels(self.classes, "task.output_format is map")
        self.label_counts = {str(k): int(v) for k, v in seen.value_counts().items()}

    def state(self) -> dict[str, Any]:
        return {"classes": self.classes, "label_counts": self.label_counts, "temperature": self.temperature,
                "processor": self.processor.state() if self.processor else None}

    def load_state(self, state: dict[str, Any]) -> None:
        self.classes = list(state["classes"])
        self.label_counts = dict(state.get("label_counts", {}))
        self.temperature = float(state.get("temperature", 1.0))
        if self.processor and state.get("processor") is not None:
            self.processor.load_state(state["processor"])

    def texts(self, frame: pd.DataFrame, tokenizer) -> list[str]:
        """The rendered model input per row."""
        if self.processor:
            frame = self.processor.transform(frame)
        missing = [f for f in self.text_fields if f not in frame.columns]
        if missing and not hasattr(self.template, "fields"):
            raise UserError(f"the data has no field `{missing[0]}` (task.text_fields){did_you_mean(missing[0], frame.columns)}; "
                            f"columns are: {', '.join(map(str, frame.columns))}")
        texts = []
        for record in frame.to_dict("records"):
            values = {str(k): "" if is_missing(v) else str(v) for k, v in record.items()}
            texts.append(self.template(values, self.context, tokenizer))
        return texts

    def label_ids(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(label index per row, mask of rows with a known label); unknown labels error or are masked."""
        mapping = self.label2id
        ids = np.full(len(frame), -1, dtype=np.int64)
        for pos, (index, value) in enumerate(frame[LABEL].items()):
            label = str(value)
            if label in mapping:
                ids[pos] = mapping[label]
            elif self.options.unknown_labels == "error":
                raise UserError(f"row {int(index) + 1}: label `{label}` never occurs in the training data"
                                f"{did_you_mean(label, self.classes)}; known labels: {_preview(self.classes)} "
                                "(set task.unknown_labels: skip to leave such rows out of evaluation)")
        return ids, ids >= 0

    def texts_for_length(self, frame, tokenizer):
        return self.texts(frame, tokenizer)

    def encode(self, frame, tokenizer, max_length):
        encoded = tokenizer(self.texts(frame, tokenizer), truncation=True, max_length=max_length)
        examples = [{"input_ids": ids, "attention_mask": mask}
                    for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
        if LABEL in frame.columns and self.classes:
            ids, known = self.label_ids(frame)
            examples = [dict(e, labels=int(i)) for e, i, k in zip(examples, ids, known) if k]
        return examples

    def input_examples(self, frame, tokenizer):
        encoded = tokenizer(self.texts(frame, tokenizer), truncation=True, max_length=self.max_length(tokenizer))
        return [{"input_ids": i, "attention_mask": m} for i, m in zip(encoded["input_ids"], encoded["attention_mask"])]

    def has_labels(self, frame: pd.DataFrame) -> bool:
        return LABEL in frame.columns

    def baseline_inputs(self, frame: pd.DataFrame) -> list[str]:
        """The text the model reads (the template without a chat template) for the TF-IDF baseline."""
        return self.texts(frame, tokenizer=None)

    # -- metrics --------------------------------------------------------------
    def metrics_from_probs(self, labels, probs):
        from tunelab.metrics.classification import classification_metrics

        return classification_metrics(labels, probs, self.options.top_k)

    def metric_for_best_model(self) -> tuple[str, bool]:
        return f"map@{self.options.top_k}", True

    def probe_head_first(self) -> bool:
        return self.options.head_init == "probe"

    def class_prior(self):
        if not self.label_counts:  # add-one smoothing: a class seen 0 times is not impossible
            return None
        counts = np.array([self.label_counts.get(c, 0) for c in self.classes], dtype=np.float64) + 1.0
        return counts / counts.sum()

    def score_probabilities(self, frame, probs):
        from tunelab.metrics.classification import log_loss, majority_probs, map_at_k

        ids, known = self.label_ids(frame)
        metrics = self.metrics_from_probs(ids[known], probs[known])
        if self.label_counts and known.any():  # the class-prior guess, for contrast
            counts = np.array([self.label_counts.get(c, 0) for c in self.classes])
            prior = majority_probs(np.repeat(np.arange(len(self.classes)), counts), len(self.classes), int(known.sum()))
            metrics[f"prior_map@{self.options.top_k}"] = map_at_k(ids[known], prior, self.options.top_k)
            metrics["prior_log_loss"] = log_loss(ids[known], np.tile(self.class_prior(), (int(known.sum()), 1)))
        if not known.all():
            metrics["eval_rows_unknown_label"] = int((~known).sum())
        return metrics

    # -- predictions ----------------------------------------------------------
    def predictions_frame(self, frame: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
        """Top-k labels and per-class probabilities, one row per input row. `top_k` and `top_k_probs` hold
        lists (a label may contain spaces); `write_predictions` renders them per format."""
        from tunelab.metrics.classification import top_k_indices

        top = top_k_indices(probs, self.options.top_k)
        classes = np.array(self.classes, dtype=object)
        out = pd.DataFrame({"id": self.row_ids(frame)}, index=frame.index)
        out["prediction"] = classes[top[:, 0]]
        out["top_k"] = [list(row) for row in classes[top]]
        out["top_k_probs"] = [[round(float(p), 6) for p in probs[i, t]] for i, t in enumerate(top)]
        if LABEL in frame.columns:
            out["label"] = frame[LABEL].to_numpy()
        probs_frame = pd.DataFrame(probs, columns=[f"prob:{c}" for c in self.classes], index=frame.index)
        return pd.concat([out, probs_frame], axis=1)

    def write_predictions(self, predictions: pd.DataFrame, path: Path, fmt: str | None = None) -> Path:
        from tunelab.io.submission import write_map_submission

        fmt = fmt or self.options.output_format
        if fmt == "map":
            return write_map_submission(predictions["id"].tolist(), [_as_list(v) for v in predictions["top_k"]], path)
        if fmt == "csv":  # one readable, unambiguous cell per list: a JSON array (labels may contain spaces)
            predictions = predictions.copy()
            for col in ("top_k", "top_k_probs"):
                if col in predictions.columns:
                    predictions[col] = [json.dumps(_as_list(v), ensure_ascii=False) for v in predictions[col]]
        return super().write_predictions(predictions, path, fmt)


def check_map_labels(labels, why: str) -> None:
    """The MAP format separates labels by spaces: one UserError naming the first label that has one."""
    from tunelab.io.submission import check_map_label

    for label in labels:
        check_map_label(label, why)


def _as_list(value) -> list:
    """A top-k cell as a list (a list, tuple or array; JSON text as read back from a CSV)."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, list):
            raise UserError(f"top-k cell `{value}` is not a list of labels (a JSON array)")
        return parsed
    return list(value)


def _preview(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")
