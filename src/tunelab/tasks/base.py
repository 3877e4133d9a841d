"""The task plug-in contract.

A task answers five questions and nothing else:
1. data:    which fields it needs (`fields`) and how a row becomes a model example (`prepare`, `encode`);
2. head:    which model head it trains (`head`, `head_kwargs`);
3. loss:    the head's own loss (a task needing another one overrides the trainer, not this contract);
4. metrics: what it measures on held-out data (`trainer_metrics` from logits during training; `score_*`
            from real predictions after it);
5. output:  how predictions are written (`write_predictions`).

Beyond that a task declares what it *can do* by its capability class, so a front end can ask before
it calls (`capabilities()`, `require_capability`):
- `GenerativeTask`: the model writes text (chat, generate, ROUGE eval, test mode). The task supplies
  prompts, references and scoring; generation itself runs in `tunelab.inference`.
- `ProbabilisticTask`: the model outputs class probabilities (predict, ensembles, submissions).

Training, run directories, checkpoints, logging and the CLI never ask which task they run. Fields
are *logical* names (e.g. `question`); the user's `data.columns` maps them to their file's column
names before the task sees the frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

import pandas as pd

from tunelab.config.schema import RunConfig, TaskConfig

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedTokenizerBase

Head = Literal["causal_lm", "sequence_classification"]


@dataclass(frozen=True)
class Fields:
    """Logical fields a task reads. `any_of` lists alternatives: one group must be fully present."""

    any_of: tuple[tuple[str, ...], ...]
    optional: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    """Fields that only scoring needs (labels, references): a file to predict for may lack them."""

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

    special_tokens_in_text: ClassVar[bool] = True
    """True when `texts_for_length` already holds the special tokens (chat templates render them as text);
    False when the tokenizer adds them on encoding (encoder [CLS]/[SEP])."""

    def input_lengths(self, frame: pd.DataFrame, tokenizer: "PreTrainedTokenizerBase") -> list[int]:
        """Tokens per row before truncation, counted exactly as `encode` counts them."""
        texts = self.texts_for_length(frame, tokenizer)
        if not texts:
            return []
        encoded = tokenizer(texts, add_special_tokens=not self.special_tokens_in_text, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

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

    # -- 4. metrics ------------------------------------------------------
    def trainer_metrics(self) -> Callable | None:
        """`compute_metrics` for the Trainer's evaluation loop (logit-based tasks), or None."""
        return None

    def metric_for_best_model(self) -> tuple[str, bool]:
        """(metric name as the Trainer logs it without `eval_`, greater_is_better)."""
        return "loss", False

    def has_labels(self, frame: pd.DataFrame) -> bool:
        """True when `frame` carries what scoring needs (references / labels), not only model inputs."""
        raise NotImplementedError

    # -- capabilities ----------------------------------------------------
    @classmethod
    def capabilities(cls) -> tuple[str, ...]:
        """What front ends may ask of this task: "generative", "probabilistic"."""
        return tuple(c.capability for c in (GenerativeTask, ProbabilisticTask) if issubclass(cls, c))

    # -- 5. predictions --------------------------------------------------
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


class GenerativeTask(Task):
    """Capability: the model writes text. The task supplies prompts, references and scores;
    `tunelab.inference.predict` runs the generation engine over them."""

    capability: ClassVar[str] = "generative"
    head = "causal_lm"

    def generation_prompt(self, row: pd.Series, tokenizer: "PreTrainedTokenizerBase") -> str:
        """The text generation starts from (chat-templated where the task uses a template)."""
        raise NotImplementedError

    def references(self, row: pd.Series) -> list[str]:
        """What a good output for `row` looks like (one or more references); the first is the training target."""
        raise NotImplementedError

    def reference(self, row: pd.Series) -> str:
        return self.references(row)[0]

    def score_predictions(self, predictions: pd.DataFrame) -> dict[str, float]:
        """Mean scores over rows of `predictions` (columns `prediction`, `references`); adds per-row
        score columns in place. Default: ROUGE (language-aware, see tunelab.metrics.rouge)."""
        from tunelab.metrics.rouge import RougeMetric, mean_scores

        metric = RougeMetric(self.rouge_cjk)
        each = metric.score_each(predictions["prediction"].tolist(), predictions["references"].tolist())
        for key in metric.rouge_types:
            predictions[key] = [round(s[key], 4) for s in each]
        return mean_scores(each, metric.rouge_types)

    rouge_cjk: ClassVar[str] = "char"

    def eval_generation_rows(self) -> int | None:
        """How many held-out rows to generate for and score after training (0: none, None: all)."""
        return 0

    def in_training_generation(self) -> tuple[int, int] | None:
        """(every N steps, rows) to generate for and score during training, or None."""
        return None


class ProbabilisticTask(Task):
    """Capability: the model gives each row a probability per class (`classes`): predictions,
    ensembles (averaged probabilities) and submission files build on that."""

    capability: ClassVar[str] = "probabilistic"
    classes: list[str]

    def predict_proba(self, model, tokenizer, frame: pd.DataFrame) -> "np.ndarray":
        """(rows, len(classes)) probabilities, rows in `frame`'s order."""
        raise NotImplementedError

    def predictions_frame(self, frame: pd.DataFrame, probs: "np.ndarray") -> pd.DataFrame:
        """One output row per input row: id, prediction, probabilities (and the label when known)."""
        raise NotImplementedError

    def score_probabilities(self, frame: pd.DataFrame, probs: "np.ndarray") -> dict[str, float]:
        """Task metrics from probabilities for labelled rows of `frame`."""
        raise NotImplementedError

    def review(self, model, tokenizer, train: pd.DataFrame, held_out: pd.DataFrame,
               run_dir: Path | None) -> tuple[dict[str, Any], pd.DataFrame | None, list[str]]:
        """After training: (metrics, predictions on the held-out rows, lines to show). A task may calibrate
        here (what it learns goes into `state()`), fit and save baselines into `run_dir` (None: save
        nothing), and add warnings. Default: the metrics and predictions of `predict_proba`."""
        if held_out.empty or not self.has_labels(held_out):
            return {}, None, []
        probs = self.predict_proba(model, tokenizer, held_out)
        return self.score_probabilities(held_out, probs), self.predictions_frame(held_out, probs), []


def require_capability(task: Task, capability: type[Task], action: str) -> Task:
    """Return `task` if it has `capability`, else a UserError saying which tasks can do `action`."""
    from tunelab.errors import UserError

    if not isinstance(task, capability):
        raise UserError(f"{action} needs a {capability.capability} task; this run's task `{task.name}` is "
                        f"{' and '.join(task.capabilities()) or 'neither generative nor probabilistic'}")
    return task


class SequenceClassificationTask(ProbabilisticTask):
    """Shared head plumbing for tasks that predict one of `self.classes` per row (classify, preference).

    Subclasses set `self.classes` (in `__init__`/`fit`/`load_state`), `id_field`, and implement
    `input_examples`, `label_ids`, `metrics_from_probs`, `score_probabilities`, `predictions_frame` and
    `baseline_inputs`; their config carries `calibrate` and `baseline` (tasks/review.py reads them).
    """

    head = "sequence_classification"
    stratify_field = "label"  # every class on both sides of the split
    special_tokens_in_text = False
    classes: list[str]
    id_field: str = "id"

    @property
    def label2id(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def collate(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def head_kwargs(self) -> dict[str, Any]:
        return {"num_labels": len(self.classes), "id2label": dict(enumerate(self.classes)),
                "label2id": self.label2id, "problem_type": "single_label_classification"}

    def head_logits(self, logits: "torch.Tensor") -> "torch.Tensor":
        """Class logits from the model's output logits (one row per example here; a pairwise reward model
        turns two sequences' scores into one pair's logits). Training's loss and prediction both use it."""
        return logits

    def lora_modules_to_save(self) -> list[str]:
        # The freshly initialised head must train in full and be saved with the adapter
        # (`classifier` in BERT-style encoders, `score` in decoder LLMs).
        return ["classifier", "score"]

    def max_length(self, tokenizer) -> int:
        """train.max_length, capped by what the tokenizer's model can take."""
        limit = self.config.train.max_length or 512
        return int(min(limit, getattr(tokenizer, "model_max_length", None) or limit))

    def row_ids(self, frame: pd.DataFrame) -> list:
        """The id column's values, else 1-based data row numbers."""
        if self.id_field in frame.columns:
            return frame[self.id_field].tolist()
        return [int(i) + 1 for i in frame.index]

    def input_examples(self, frame: pd.DataFrame, tokenizer) -> list[dict]:
        """Unlabelled model inputs (input_ids, attention_mask) per row, in `frame`'s order."""
        raise NotImplementedError

    def metrics_from_probs(self, labels: "np.ndarray", probs: "np.ndarray") -> dict[str, float]:
        """The metrics logged during training (and after it) from label ids and probabilities."""
        raise NotImplementedError

    def trainer_metrics(self):
        import numpy as np

        from tunelab.metrics.classification import logits_of, softmax

        from tunelab.metrics.classification import log_loss

        def compute_metrics(eval_prediction) -> dict[str, float]:
            labels, probs = np.asarray(eval_prediction.label_ids), softmax(logits_of(eval_prediction))
            metrics = self.metrics_from_probs(labels, probs)
            # For the in-training check (callbacks.LearningWatch): a collapse, or no gain over the prior, is
            # said at the evaluation that shows it, not only at the end.
            metrics["distinct_top1"] = float(len(np.unique(probs.argmax(axis=1)))) if len(probs) else 0.0
            prior = self.class_prior()
            if prior is not None and len(labels) and prior.shape[0] == probs.shape[1]:
                metrics["prior_log_loss"] = log_loss(labels, np.tile(prior, (len(labels), 1)))
            return metrics

        return compute_metrics

    def probe_head_first(self) -> bool:
        """Initialise the fresh head by a linear probe on the frozen features before fine-tuning (LP-FT)."""
        return False

    def class_prior(self) -> "np.ndarray | None":
        """The training class frequencies (add-one smoothed) in `classes` order, or None when unknown."""
        return None

    # -- calibration, baseline, review (the bulk lives in tasks/review.py and tasks/baseline.py) --------
    temperature: float = 1.0
    """Temperature scaling fitted on the held-out rows after training (1 = none); saved in the task state
    (subclasses include it in `state()`) and applied by `predict_proba`."""
    baseline_kind: ClassVar[str] = "text"
    """The classical baseline's input (tasks/baseline.py): "text" (one text per row) or "pair" (A, B)."""

    def label_ids(self, frame: pd.DataFrame) -> tuple["np.ndarray", "np.ndarray"]:
        """(class index per row, mask of rows whose label the model can score)."""
        raise NotImplementedError

    def baseline_inputs(self, frame: pd.DataFrame):
        """What the TF-IDF baseline reads: a list of texts ("text"), or (responses_a, responses_b) ("pair")."""
        raise NotImplementedError

    def baseline_proba(self, run_dir: str | Path, frame: pd.DataFrame) -> "np.ndarray":
        """(rows, len(classes)) probabilities of the run's saved classical baseline (for ensembles)."""
        from tunelab.tasks.baseline import BASELINE_FILE, TfidfBaseline

        return TfidfBaseline.load(Path(run_dir) / BASELINE_FILE).predict_proba(self.baseline_inputs(frame))

    def raw_proba(self, model, tokenizer, frame: pd.DataFrame) -> "np.ndarray":
        """Probabilities before temperature scaling."""
        from tunelab.models.forward import predict_probabilities

        return predict_probabilities(model, self.input_examples(frame, tokenizer), self.collate(tokenizer),
                                     self.options.predict_batch_size, head_logits=self.head_logits)

    def predict_proba(self, model, tokenizer, frame: pd.DataFrame):
        from tunelab.metrics.classification import apply_temperature

        return apply_temperature(self.raw_proba(model, tokenizer, frame), self.temperature)

    def review(self, model, tokenizer, train, held_out, run_dir):
        """Temperature scaling on the held-out rows (task.calibrate), the TF-IDF baseline beside the model
        (task.baseline) and loud warnings when the model collapsed or lost to the prior or the baseline."""
        from tunelab.tasks.review import review_classifier

        return review_classifier(self, model, tokenizer, train, held_out, run_dir)
