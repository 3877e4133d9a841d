"""Pairwise preference prediction (Chatbot-Arena style): which of two responses will people prefer?

Data, either format:
- Arena CSV: id, prompt, response_a, response_b, winner_model_a, winner_model_b, winner_tie
  (prompt/response cells may be JSON lists of turns, as in the Kaggle files);
- chosen/rejected transcripts (Anthropic HH style "\\n\\nHuman: ... \\n\\nAssistant: ..."): the shared
  prefix up to the last common "Assistant:" is the prompt, the differing tails are the responses,
  placed as A or B by a seeded RNG (so the label is not always "A").
Two architectures (`task.architecture`):
- `cross` (cross-encoder): one input `[CLS] prompt [SEP] response_a [SEP] response_b [SEP]`, each part
  truncated fairly so both responses survive; a 3-way head (a, b, tie), or 2-way when training has no ties.
  Position bias is handled by A/B swap augmentation (training) and swap test-time averaging (prediction).
- `reward` (Bradley-Terry reward model): a shared backbone scores `[CLS] prompt [SEP] response [SEP]` for
  each response alone; P(a) = sigmoid(s_a - s_b). With ties, each sequence also gives a tie term and
  the tie logit is (s_a + s_b)/2 + the pair's mean tie term (Davidson's model: ties likeliest when the
  scores are close). Swap-symmetric by construction (P(a | x, y) = P(b | y, x)), so it needs no swap
  augmentation or averaging, and each response gets the whole token budget beside the prompt.
The verbosity bias is reported as the correlation of the predicted preference with the response-length
difference.
A 2-way model never predicts a tie as exactly 0: it writes `task.tie_probability` (0.001) and scales a/b
by (1 - it), so ties in test data cost 6.9 nats each, not an infinite log loss.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from tunelab.config.schema import TaskConfig
from tunelab.data.validate import is_missing
from tunelab.errors import UserError, did_you_mean
from tunelab.tasks.base import Fields, SequenceClassificationTask

WINNERS = ("winner_model_a", "winner_model_b", "winner_tie")
LABEL = "label"
# Swapping A and B maps label a -> b, b -> a, tie -> tie; the permutation is its own inverse,
# so it also un-swaps probability columns predicted on swapped inputs.
SWAP_PERMUTATION = np.array([1, 0, 2])
ASSISTANT_MARK = "\n\nAssistant:"


class PreferenceConfig(TaskConfig):
    name: Literal["preference"] = "preference"
    swap_augment: bool = True
    """Train on every pair twice, once with A and B swapped (labels swapped accordingly)."""
    swap_tta: bool = True
    """Predict on both orders and average (the swapped prediction un-swapped)."""
    num_classes: Literal["auto", 2, 3] = "auto"
    """3 = a/b/tie; 2 = a/b; auto = 3 if the training data has ties, else 2."""
    prompt_share: float = Field(0.3, gt=0.0, lt=1.0)
    """At most this share of the token budget goes to the prompt while the responses need room."""
    id_field: str = "id"
    output_format: Literal["arena", "csv", "jsonl"] = "arena"
    predict_batch_size: int = Field(32, ge=1)
    tie_probability: float = Field(1e-3, gt=0.0, lt=0.5)
    """What a 2-way model (trained without ties) predicts for a tie: this small floor, with a and b scaled by
    (1 - it) so rows still sum to 1. An exact 0 would make the log loss of any tie in the test data infinite;
    a tie costs -ln(0.001) = 6.9 nats, a row without one 0.001 nats."""
    architecture: Literal["cross", "reward"] = "cross"
    """`cross`: one input holding prompt, A and B (3-way or 2-way head); `reward`: a shared backbone scores
    prompt + each response, P(a) from the score difference (Bradley-Terry; Davidson ties)."""
    calibrate: bool = True
    """Temperature scaling of the (swap-averaged) probabilities, fitted on the held-out rows after training."""
    baseline: bool = True
    """Fit the TF-IDF(A) - TF-IDF(B) + length-features logistic-regression baseline and report it beside the model."""


# -- data helpers (pure functions, unit-tested) --------------------------------------------------------
def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) from two transcripts sharing a conversation prefix."""
    common = 0
    for x, y in zip(chosen, rejected):
        if x != y:
            break
        common += 1
    if chosen == rejected:
        common = len(chosen)
    cut = chosen.rfind(ASSISTANT_MARK, 0, common) if common else -1
    if cut >= 0 and cut + len(ASSISTANT_MARK) <= common:
        start = cut + len(ASSISTANT_MARK)
        return chosen[:start].strip(), chosen[start:].strip(), rejected[start:].strip()
    return chosen[:common].strip(), chosen[common:].strip(), rejected[common:].strip()


def turns_text(value) -> str:
    """Arena cells hold JSON lists of turns (`["hi", null]`); join them. Plain text passes through."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            turns = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(turns, list):
            return "\n\n".join(str(t) for t in turns if t is not None)
    return "" if is_missing(value) else str(value)


def swap_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The same pairs with A and B exchanged (responses, winner columns and label)."""
    swapped = frame.copy()
    swapped["response_a"], swapped["response_b"] = frame["response_b"], frame["response_a"]
    if "winner_model_a" in frame.columns and "winner_model_b" in frame.columns:
        swapped["winner_model_a"], swapped["winner_model_b"] = frame["winner_model_b"], frame["winner_model_a"]
    if LABEL in frame.columns:
        swapped[LABEL] = swap_labels(frame[LABEL].to_numpy())
    return swapped


def swap_labels(labels: np.ndarray) -> np.ndarray:
    return SWAP_PERMUTATION[np.asarray(labels, dtype=np.int64)]


def unswap_probs(probs: np.ndarray) -> np.ndarray:
    """Probabilities predicted on swapped pairs, back in the original (a, b[, tie]) order."""
    probs = np.asarray(probs)
    return probs[:, SWAP_PERMUTATION[: probs.shape[1]]]


def fair_allocation(prompt_len: int, a_len: int, b_len: int, budget: int, prompt_share: float) -> tuple[int, int, int]:
    """Token counts to keep per part: the prompt gets at most `prompt_share` of the budget while the
    responses need room; the rest is shared equally (water-filling) so a long response cannot crowd
    out the other; budget left unused by short responses goes back to the prompt."""
    budget = max(budget, 0)
    wanted = [min(prompt_len, int(budget * prompt_share)), a_len, b_len]
    alloc = [0, 0, 0]
    remaining = budget
    active = [i for i in range(3) if wanted[i] > 0]
    while active and remaining > 0:
        share = remaining // len(active)
        if share == 0:
            for i in active[:remaining]:
                alloc[i] += 1
            remaining = 0
            break
        still = []
        for i in active:
            give = min(share, wanted[i] - alloc[i])
            alloc[i] += give
            remaining -= give
            if alloc[i] < wanted[i]:
                still.append(i)
        active = still
    alloc[0] += min(remaining, prompt_len - alloc[0])
    return alloc[0], alloc[1], alloc[2]


class PreferenceTask(SequenceClassificationTask):
    name = "preference"
    config_class = PreferenceConfig
    fields = Fields(any_of=(("prompt", "response_a", "response_b") + WINNERS, ("chosen", "rejected")),
                    optional=("id", "model_a", "model_b"), targets=WINNERS)
    description = "pairwise preference (Chatbot Arena / chosen-rejected): a/b/tie probabilities, log loss"
    output_formats = ("arena", "csv", "jsonl")
    options: PreferenceConfig

    def __init__(self, config):
        super().__init__(config)
        self.id_field = self.options.id_field
        self.classes: list[str] = list(WINNERS)
        self.class_counts: list[int] = []

    # -- data -----------------------------------------------------------------
    def prepare(self, frame: pd.DataFrame, split: str) -> pd.DataFrame:
        frame = frame.copy()
        if "chosen" in frame.columns and "rejected" in frame.columns and "response_a" not in frame.columns:
            frame = self._from_chosen_rejected(frame, split)
        for col in ("prompt", "response_a", "response_b"):
            if col in frame.columns:
                frame[col] = frame[col].map(turns_text)
        if all(w in frame.columns for w in WINNERS):
            frame[LABEL] = self._labels_from_winners(frame)
        return frame

    def _from_chosen_rejected(self, frame: pd.DataFrame, split: str) -> pd.DataFrame:
        parts = [split_transcripts(str(c), str(r)) for c, r in zip(frame["chosen"], frame["rejected"])]
        # Seeded per split, so a rerun places every pair the same way.
        rng = np.random.default_rng([self.config.data.seed, zlib.crc32(split.encode())])
        chosen_is_a = rng.random(len(frame)) < 0.5
        frame["prompt"] = [p for p, _, _ in parts]
        frame["response_a"] = [c if s else r for (_, c, r), s in zip(parts, chosen_is_a)]
        frame["response_b"] = [r if s else c for (_, c, r), s in zip(parts, chosen_is_a)]
        frame["winner_model_a"] = chosen_is_a.astype(int)
        frame["winner_model_b"] = (~chosen_is_a).astype(int)
        frame["winner_tie"] = 0
        return frame.drop(columns=["chosen", "rejected"])

    @staticmethod
    def _labels_from_winners(frame: pd.DataFrame) -> list[int | None]:
        labels: list[int | None] = []
        for index, row in frame[list(WINNERS)].iterrows():
            try:
                flags = [int(float(v)) for v in row]
            except (TypeError, ValueError):
                if all(str(v).strip() == "" for v in row):  # an unlabelled row; `clean` reports it as empty
                    labels.append(None)
                    continue
                raise UserError(f"row {int(index) + 1}: winner columns must be 0/1, got {', '.join(map(str, row))}") from None
            if sorted(flags) != [0, 0, 1]:
                raise UserError(f"row {int(index) + 1}: exactly one of {', '.join(WINNERS)} must be 1, got {flags}")
            labels.append(flags.index(1))
        return labels

    def fit(self, train: pd.DataFrame) -> None:
        labels = train[LABEL].astype(int).to_numpy()
        n = self.options.num_classes
        if n == "auto":
            n = 3 if (labels == 2).any() else 2
        if n == 2 and (labels == 2).any():
            raise UserError(f"task.num_classes is 2 but the training data has {(labels == 2).sum()} ties "
                            "(winner_tie = 1); use 3 or auto")
        if n == 3 and not (labels == 2).any():
            raise UserError(f"task.num_classes is 3 but none of the {len(labels)} training pairs is a tie "
                            "(winner_tie = 1), so a tie class cannot be learned; use 2 or auto (a 2-way model "
                            f"predicts ties with task.tie_probability = {self.options.tie_probability:g})")
        self.classes = list(WINNERS[:n])
        self.class_counts = np.bincount(labels, minlength=n).tolist()

    def state(self) -> dict[str, Any]:
        return {"classes": self.classes, "class_counts": self.class_counts, "temperature": self.temperature}

    def load_state(self, state: dict[str, Any]) -> None:
        self.classes = list(state["classes"])
        self.class_counts = list(state.get("class_counts", []))
        self.temperature = float(state.get("temperature", 1.0))

    # -- encoding -------------------------------------------------------------
    def _check_inputs(self, frame: pd.DataFrame) -> None:
        for col in ("prompt", "response_a", "response_b"):
            if col not in frame.columns:
                raise UserError(f"preference data needs `{col}`{did_you_mean(col, frame.columns)} (or chosen/rejected); "
                                f"columns are: {', '.join(map(str, frame.columns))}")

    def _specials(self, tokenizer) -> tuple[list[int], int]:
        first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        return ([first] if first is not None else []), sep

    @property
    def reward_model(self) -> bool:
        return self.options.architecture == "reward"

    def input_ids(self, frame: pd.DataFrame, tokenizer, max_length: int) -> list[list[int]]:
        """`[CLS] prompt [SEP] a [SEP] b [SEP]` per row; the prompt keeps its end, responses their start."""
        self._check_inputs(frame)
        start, sep = self._specials(tokenizer)
        budget = max_length - len(start) - 3
        # Parts are truncated below, so the tokenizer's "longer than model_max_length" warning is noise here.
        tok = lambda col: tokenizer(frame[col].astype(str).tolist(), add_special_tokens=False, verbose=False)["input_ids"]
        prompts, answers_a, answers_b = tok("prompt"), tok("response_a"), tok("response_b")
        rows = []
        for p, a, b in zip(prompts, answers_a, answers_b):
            lp, la, lb = fair_allocation(len(p), len(a), len(b), budget, self.options.prompt_share)
            rows.append(start + (p[len(p) - lp:] if lp else []) + [sep] + a[:la] + [sep] + b[:lb] + [sep])
        return rows

    def response_ids(self, frame: pd.DataFrame, tokenizer, max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        """The reward model's two inputs per row, `[CLS] prompt [SEP] response [SEP]` for A and for B."""
        self._check_inputs(frame)
        start, sep = self._specials(tokenizer)
        budget = max_length - len(start) - 2
        tok = lambda col: tokenizer(frame[col].astype(str).tolist(), add_special_tokens=False, verbose=False)["input_ids"]
        prompts = tok("prompt")
        pairs = []
        for answers in (tok("response_a"), tok("response_b")):
            rows = []
            for p, r in zip(prompts, answers):
                lp, lr, _ = fair_allocation(len(p), len(r), 0, budget, self.options.prompt_share)
                rows.append(start + (p[len(p) - lp:] if lp else []) + [sep] + r[:lr] + [sep])
            pairs.append(rows)
        return pairs[0], pairs[1]

    def texts_for_length(self, frame, tokenizer):
        self._check_inputs(frame)
        sep = tokenizer.sep_token or tokenizer.eos_token or "\n"
        if self.reward_model:  # the longer of the two scored sequences
            return [f"{p} {sep} {a if len(a) >= len(b) else b}"
                    for p, a, b in zip(frame["prompt"], frame["response_a"], frame["response_b"])]
        return [f"{p} {sep} {a} {sep} {b}" for p, a, b in zip(frame["prompt"], frame["response_a"], frame["response_b"])]

    def input_lengths(self, frame, tokenizer):
        """Untruncated `[CLS] prompt [SEP] a [SEP] b [SEP]` lengths, as `input_ids` builds them."""
        self._check_inputs(frame)
        start, _ = self._specials(tokenizer)
        parts = [tokenizer(frame[c].astype(str).tolist(), add_special_tokens=False, verbose=False)["input_ids"]
                 for c in ("prompt", "response_a", "response_b")]
        if self.reward_model:
            return [len(start) + 2 + len(p) + max(len(a), len(b)) for p, a, b in zip(*parts)]
        return [len(start) + 3 + len(p) + len(a) + len(b) for p, a, b in zip(*parts)]

    def encode(self, frame, tokenizer, max_length):
        if self.reward_model:
            ids_a, ids_b = self.response_ids(frame, tokenizer, max_length)
            examples = [{"input_ids": a, "input_ids_b": b} for a, b in zip(ids_a, ids_b)]
        else:
            examples = [{"input_ids": ids, "attention_mask": [1] * len(ids)}
                        for ids in self.input_ids(frame, tokenizer, max_length)]
        if LABEL in frame.columns:
            labels = frame[LABEL].astype(int).to_numpy()
            if (labels >= len(self.classes)).any():
                row = int(frame.index[labels >= len(self.classes)][0]) + 1
                raise UserError(f"row {row}: a tie, but the model was trained without ties (2 classes)")
            examples = [dict(e, labels=int(y)) for e, y in zip(examples, labels)]
        return examples

    def encode_train(self, frame, tokenizer, max_length):
        """Training examples: with swap augmentation, every pair also appears with A and B exchanged."""
        examples = self.encode(frame, tokenizer, max_length)
        if self.options.swap_augment and not self.reward_model:  # a reward model is swap-symmetric already
            examples += self.encode(swap_frame(frame), tokenizer, max_length)
        return examples

    def input_examples(self, frame, tokenizer):
        unlabelled = frame.drop(columns=[LABEL], errors="ignore")
        return self.encode(unlabelled, tokenizer, self.max_length(tokenizer))

    def has_labels(self, frame: pd.DataFrame) -> bool:
        return LABEL in frame.columns

    # -- head -----------------------------------------------------------------
    def collate(self, tokenizer):
        if self.reward_model:
            from tunelab.data.collate import PairCollator

            return PairCollator(tokenizer.pad_token_id)
        return super().collate(tokenizer)

    def head_kwargs(self) -> dict[str, Any]:
        if not self.reward_model:
            return super().head_kwargs()
        outputs = ["score"] + (["tie"] if len(self.classes) == 3 else [])  # per sequence: its score (+ tie term)
        return {"num_labels": len(outputs), "id2label": dict(enumerate(outputs)),
                "label2id": {o: i for i, o in enumerate(outputs)}, "problem_type": "regression"}

    def head_logits(self, logits):
        """Reward model: rows (a0, b0, a1, b1, ...) of per-sequence outputs -> (pairs, classes) logits."""
        if not self.reward_model:
            return logits
        import torch

        pairs = logits.reshape(-1, 2, logits.shape[-1])
        scores = pairs[..., 0]  # (pairs, 2): s_a, s_b; softmax over them is sigmoid(s_a - s_b)
        if len(self.classes) == 2:
            return scores
        tie = scores.mean(dim=1, keepdim=True) + pairs[..., 1].mean(dim=1, keepdim=True)
        return torch.cat([scores, tie], dim=1)

    def label_ids(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(0 a / 1 b / 2 tie per row, mask of the labels the head has: ties are outside a 2-way head)."""
        labels = frame[LABEL].astype(int).to_numpy()
        return labels, labels < len(self.classes)

    baseline_kind = "pair"

    def baseline_inputs(self, frame: pd.DataFrame) -> tuple[list[str], list[str]]:
        self._check_inputs(frame)
        return frame["response_a"].astype(str).tolist(), frame["response_b"].astype(str).tolist()

    # -- metrics --------------------------------------------------------------
    def metrics_from_probs(self, labels, probs):
        from tunelab.metrics.classification import accuracy, log_loss

        return {"log_loss": log_loss(labels, probs), "accuracy": accuracy(labels, probs)}

    def metric_for_best_model(self) -> tuple[str, bool]:
        return "log_loss", False

    def class_prior(self):
        if not self.class_counts:
            return None
        counts = np.asarray(self.class_counts, dtype=np.float64) + 1.0
        return counts / counts.sum()

    def score_probabilities(self, frame, probs):
        from tunelab.metrics.classification import log_loss, pearson

        labels = frame[LABEL].astype(int).to_numpy()
        prior = self.class_prior()
        if prior is not None:
            prior = np.tile(prior, (len(labels), 1))
        if probs.shape[1] == 2 and (labels == 2).any():  # ties scored against a 2-way model's tie floor
            probs = self.with_tie(probs)
            prior = self.with_tie(prior) if prior is not None else None
        metrics = self.metrics_from_probs(labels, probs)
        if prior is not None:
            metrics["prior_log_loss"] = log_loss(labels, prior)
        length_diff = (frame["response_a"].str.len() - frame["response_b"].str.len()).to_numpy()
        metrics["length_corr_pred"] = pearson(probs[:, 0] - probs[:, 1], length_diff)
        metrics["length_corr_true"] = pearson((labels == 0).astype(float) - (labels == 1), length_diff)
        return metrics

    # -- predictions ----------------------------------------------------------
    def raw_proba(self, model, tokenizer, frame: pd.DataFrame) -> np.ndarray:
        """(n, n_classes) probabilities before temperature scaling; with swap_tta the swapped-order prediction
        is un-swapped and averaged in (the temperature then scales the log of that average)."""
        probs = super().raw_proba(model, tokenizer, frame)
        if self.options.swap_tta and not self.reward_model:  # a reward model gives the same either way
            probs = (probs + unswap_probs(super().raw_proba(model, tokenizer, swap_frame(frame)))) / 2
        return probs

    def with_tie(self, probs: np.ndarray) -> np.ndarray:
        """A 2-way model's (n, 2) probabilities as (n, 3): tie = task.tie_probability (see io.submission.with_tie)."""
        from tunelab.io.submission import with_tie

        return with_tie(probs, self.options.tie_probability)

    def predictions_frame(self, frame: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
        """a/b/tie probabilities per row; a 2-way model's tie column is task.tie_probability, never 0."""
        full = self.with_tie(probs) if probs.shape[1] == 2 else np.asarray(probs, dtype=np.float64)
        out = pd.DataFrame({"id": self.row_ids(frame)}, index=frame.index)
        for j, name in enumerate(WINNERS):
            out[name] = full[:, j]
        out["prediction"] = [WINNERS[j] for j in full.argmax(axis=1)]
        if LABEL in frame.columns:
            out["label"] = [WINNERS[int(y)] for y in frame[LABEL]]
        return out

    def write_predictions(self, predictions: pd.DataFrame, path: Path, fmt: str | None = None) -> Path:
        from tunelab.io.submission import write_arena_submission

        fmt = fmt or self.options.output_format
        if fmt == "arena":
            return write_arena_submission(predictions["id"].tolist(), predictions[list(WINNERS)].to_numpy(), path,
                                          self.options.tie_probability)
        return super().write_predictions(predictions, path, fmt)
