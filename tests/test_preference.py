"""Preference task: transcript splitting, A/B swap mapping, fair truncation, swap test-time averaging, e2e."""
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tunelab.config import build_config
from tunelab.errors import UserError
from tunelab.tasks.preference import (
    PreferenceTask, fair_allocation, split_transcripts, swap_frame, swap_labels, turns_text, unswap_probs,
)

SHARED = Path(os.environ.get("TUNELAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
HH = SHARED / "preference_hh_rlhf" / "test.jsonl.gz"


def _task(**task_options):
    return PreferenceTask(build_config({"task": {"name": "preference", **task_options},
                                        "model": {"name_or_path": "all-minilm-l6-v2"}}))


@pytest.fixture(scope="module")
def tokenizer():
    from tunelab.config.schema import ModelConfig
    from tunelab.models import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="all-minilm-l6-v2"))


def test_swap_maps_labels_a_to_b_b_to_a_tie_to_tie():
    assert swap_labels(np.array([0, 1, 2, 0])).tolist() == [1, 0, 2, 1]
    frame = pd.DataFrame({"prompt": ["p"], "response_a": ["first"], "response_b": ["second"],
                          "winner_model_a": [1], "winner_model_b": [0], "winner_tie": [0], "label": [0]})
    swapped = swap_frame(frame)
    assert swapped.loc[0, ["response_a", "response_b"]].tolist() == ["second", "first"]
    assert swapped.loc[0, ["winner_model_a", "winner_model_b", "winner_tie"]].tolist() == [0, 1, 0]
    assert swapped.loc[0, "label"] == 1
    assert swap_frame(swapped).equals(frame)  # swapping twice is the identity


def test_unswap_probabilities():
    swapped_pred = np.array([[0.1, 0.7, 0.2]])  # on swapped input: "B" (= original A) wins
    assert unswap_probs(swapped_pred).tolist() == [[0.7, 0.1, 0.2]]
    assert unswap_probs(np.array([[0.3, 0.7]])).tolist() == [[0.7, 0.3]]


def test_split_transcripts_shared_prefix_is_the_prompt():
    chosen = "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: how to bake bread?\n\nAssistant: Mix flour and water."
    rejected = "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: how to bake bread?\n\nAssistant: Mix it."
    prompt, a, b = split_transcripts(chosen, rejected)
    assert prompt.endswith("how to bake bread?\n\nAssistant:")
    assert prompt.startswith("Human: hi")
    assert (a, b) == ("Mix flour and water.", "Mix it.")


def test_arena_json_turns_are_joined():
    assert turns_text('["Hi", null, "Bye"]') == "Hi\n\nBye"
    assert turns_text("[not json") == "[not json"


def test_fair_allocation_keeps_both_responses():
    # A huge prompt and a huge response A cannot crowd out response B.
    p, a, b = fair_allocation(5000, 5000, 40, budget=124, prompt_share=0.3)
    assert p + a + b == 124
    assert b == 40 and a >= 40 and p <= int(124 * 0.3)
    # Short responses leave their room to the prompt.
    assert fair_allocation(500, 10, 10, budget=124, prompt_share=0.3) == (104, 10, 10)
    assert fair_allocation(5, 6, 7, budget=100, prompt_share=0.3) == (5, 6, 7)


def test_chosen_rejected_placement_is_seeded_and_labels_follow(tokenizer):
    rows = pd.DataFrame({"chosen": [f"\n\nHuman: q{i}\n\nAssistant: good {i}" for i in range(40)],
                         "rejected": [f"\n\nHuman: q{i}\n\nAssistant: bad {i}" for i in range(40)]})
    task = _task()
    first, second = task.prepare(rows, "train"), task.prepare(rows, "train")
    assert first.equals(second)
    assert 5 < int(first["winner_model_a"].sum()) < 35  # both placements occur
    for _, row in first.iterrows():
        winner = row["response_a"] if row["label"] == 0 else row["response_b"]
        assert winner.startswith("good")
    task.fit(first)
    assert task.classes == ["winner_model_a", "winner_model_b"]  # no ties -> 2-way head
    examples = task.encode(first, tokenizer, max_length=32)
    assert all(e["input_ids"][0] == tokenizer.cls_token_id and e["input_ids"][-1] == tokenizer.sep_token_id for e in examples)
    assert len(task.encode_train(first, tokenizer, 32)) == 2 * len(examples)
    assert len(_task(swap_augment=False).encode_train(first, tokenizer, 32)) == len(examples)


def test_bad_winner_columns_name_the_row():
    frame = pd.DataFrame({"prompt": ["p", "q"], "response_a": ["a", "a"], "response_b": ["b", "b"],
                          "winner_model_a": ["1", "1"], "winner_model_b": ["0", "1"], "winner_tie": ["0", "0"]})
    with pytest.raises(UserError, match=r"row 2: exactly one of winner_model_a"):
        _task().prepare(frame, "train")


def _pairs(labels) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({"prompt": ["which?"] * n, "response_a": [f"answer a{i}" for i in range(n)],
                         "response_b": [f"answer b{i}" for i in range(n)], "label": list(labels)})


def test_two_way_model_never_predicts_a_tie_as_zero_and_tie_log_loss_is_finite(tmp_path):
    """A 2-way model (training without ties) once wrote winner_tie = 0 exactly: any tie in the test data
    made the arena log loss infinite. Now a tie gets task.tie_probability, a and b scaled by (1 - it)."""
    task = _task()
    task.fit(_pairs([0, 1, 0, 1]))
    assert task.classes == ["winner_model_a", "winner_model_b"]
    test = _pairs([0, 1, 2])  # the last test pair is a tie
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    predictions = task.predictions_frame(test, probs)
    full = predictions[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    np.testing.assert_allclose(full[:, 2], 1e-3)
    np.testing.assert_allclose(full.sum(axis=1), 1.0)
    np.testing.assert_allclose(full[:, 0] / full[:, 1], probs[:, 0] / probs[:, 1])
    sub = pd.read_csv(task.write_predictions(predictions, tmp_path / "submission.csv"))
    written = sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    with np.errstate(divide="ignore"):
        strict = -np.mean(np.log(written[np.arange(3), [0, 1, 2]]))  # unclipped, as a strict scorer computes it
    assert np.isfinite(strict) and strict < 3.0
    scores = task.score_probabilities(test, probs)  # evaluating on data with a tie works and is finite too
    assert np.isfinite(scores["log_loss"]) and scores["log_loss"] == pytest.approx(strict, abs=1e-6)
    assert np.isfinite(scores["prior_log_loss"])
    custom = _task(tie_probability=0.05)
    custom.fit(_pairs([0, 1]))
    assert custom.predictions_frame(test, probs)["winner_tie"].tolist() == pytest.approx([0.05] * 3)


def test_three_classes_requested_without_ties_is_one_clear_error():
    with pytest.raises(UserError, match=r"task.num_classes is 3 but none of the 4 training pairs is a tie"):
        _task(num_classes=3).fit(_pairs([0, 1, 0, 1]))
    with pytest.raises(UserError, match=r"task.num_classes is 2 but the training data has 1 ties"):
        _task(num_classes=2).fit(_pairs([0, 1, 2]))
    three = _task(num_classes=3)
    three.fit(_pairs([0, 1, 2]))
    assert three.classes == ["winner_model_a", "winner_model_b", "winner_tie"]


class _KeywordJudge(torch.nn.Module):
    """Prefers the response that contains `good`, and has a strong bias for position A."""

    def __init__(self, good_id: int, sep_id: int, position_bias: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(num_labels=3)
        self.good_id, self.sep_id, self.bias = good_id, sep_id, position_bias

    def forward(self, input_ids, attention_mask=None, **_):
        logits = []
        for ids in input_ids.tolist():
            seps = [i for i, t in enumerate(ids) if t == self.sep_id]
            a, b = ids[seps[0] + 1 : seps[1]], ids[seps[1] + 1 : seps[2]]
            logits.append([2.0 * (self.good_id in a) + self.bias, 2.0 * (self.good_id in b), 0.0])
        return SimpleNamespace(logits=torch.tensor(logits))


def test_swap_tta_unswaps_and_cancels_position_bias(tokenizer):
    frame = pd.DataFrame({"prompt": ["which?", "which?"], "response_a": ["good answer", "meh answer"],
                          "response_b": ["meh answer", "good answer"]})
    good_id = tokenizer.convert_tokens_to_ids("good")
    judge = _KeywordJudge(good_id, tokenizer.sep_token_id, position_bias=1.5)
    task = _task()
    task.classes = ["winner_model_a", "winner_model_b", "winner_tie"]
    probs = task.predict_proba(judge, tokenizer, frame)
    assert probs.sum(axis=1) == pytest.approx([1.0, 1.0])
    # With the bias averaged out, "good in A" and "good in B" are exact mirror images.
    assert probs[0, 0] == pytest.approx(probs[1, 1])
    assert probs[0, 1] == pytest.approx(probs[1, 0])
    assert probs[0, 0] > probs[0, 1] and probs[1, 1] > probs[1, 0]
    raw = _task(swap_tta=False)
    raw.classes = task.classes
    biased = raw.predict_proba(judge, tokenizer, frame)
    assert biased[0, 0] != pytest.approx(biased[1, 1])  # without TTA the position bias shows


@pytest.mark.e2e
@pytest.mark.skipif(not HH.exists(), reason=f"shared data not found: {HH}")
def test_preference_hh_rlhf_trains_and_writes_valid_submission(tmp_path):
    import math

    from tunelab.api import load
    from tunelab.io.submission import check_submission
    from tunelab.training.recipe import train

    rows = pd.read_json(HH, lines=True)
    rows.iloc[:PREF_TRAIN_ROWS].to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    test = rows.iloc[2000:2200]
    test.to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    config = build_config({
        "task": {"name": "preference", "prompt_share": 0.1, "architecture": ARCHITECTURE},
        "model": {"name_or_path": "all-minilm-l6-v2"},
        "data": {"train_path": str(tmp_path / "train.jsonl"), "eval_fraction": 0.15, "stratify_by": "label"},
        "lora": {"enabled": False},
        "train": {"preset": "fast", **PREF_TRAIN, "output_dir": str(tmp_path / "run"), "logging_steps": 10,
                  "estimate_steps": 0},
    })
    result = train(config, echo=lambda _: None)
    m = result.metrics
    assert np.isfinite(m["log_loss"]) and "length_corr_pred" in m and "eval_log_loss" in m
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert m["train_examples"] == report[0]["rows_used"]  # a reward model needs no swap augmentation
    # The classical baseline beside the model: TF-IDF(A) - TF-IDF(B) + length features beats chance here.
    assert m["baseline_log_loss"] < math.log(2) - 0.02 and m["baseline_accuracy"] > 0.55
    run = load(result.run_dir)
    predictions = run.predict(tmp_path / "test.jsonl")
    out = run.task.write_predictions(predictions, tmp_path / "submission.csv")
    assert check_submission(out, "arena", expected_ids=range(1, len(test) + 1)).rows == len(test)
    sub = pd.read_csv(out)
    assert np.allclose(sub["winner_tie"], 1e-3)  # hh-rlhf has no ties: a 2-way head, its tie floor written
    assert np.allclose(sub[["winner_model_a", "winner_model_b", "winner_tie"]].sum(axis=1), 1.0, atol=1e-6)
    test_loss = run.evaluate(tmp_path / "test.jsonl")["log_loss"]  # rows neither training nor calibration saw
    # Honest bound: chance for 2 classes is ln 2 = 0.693 (an always-0.5 model). The reward model must beat it on
    # the held-out rows and on test rows that neither training nor calibration saw.
    assert m["log_loss"] < math.log(2) - 0.005, m
    assert test_loss < math.log(2) - 0.005, (test_loss, m)


# The tiny e2e run: HH-RLHF pairs the model trains on, and the training settings.
ARCHITECTURE = "reward"
PREF_TRAIN_ROWS = 600
PREF_TRAIN = {"epochs": 2, "learning_rate": 4e-5, "batch_size": 16, "max_length": 96, "scheduler": "linear",
              "warmup_ratio": 0.1}


# -- the reward-model architecture (Bradley-Terry, Davidson ties) ---------------------------------------
def test_reward_head_logits_bradley_terry_and_davidson_tie():
    two = _task(architecture="reward")
    two.fit(_pairs([0, 1, 0, 1]))
    assert two.head_kwargs()["num_labels"] == 1  # one score per sequence
    scores = torch.tensor([[2.0], [0.5], [-1.0], [-1.0]])  # rows a0, b0, a1, b1
    pair = torch.softmax(two.head_logits(scores), dim=-1)
    assert pair.shape == (2, 2)
    assert pair[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(1.5)).item())  # sigmoid(s_a - s_b)
    assert pair[1].tolist() == pytest.approx([0.5, 0.5])
    three = _task(architecture="reward")
    three.fit(_pairs([0, 1, 2]))
    assert three.head_kwargs()["num_labels"] == 2  # score + tie term per sequence
    outputs = torch.tensor([[1.0, 0.3], [1.0, 0.3], [3.0, 0.3], [-1.0, 0.3]])
    probs = torch.softmax(three.head_logits(outputs), dim=-1)
    assert probs.shape == (2, 3) and probs.sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert probs[0, 2] > probs[1, 2]  # a tie is likelier between equal scores than between distant ones


def test_reward_model_is_swap_symmetric_on_a_real_encoder(tokenizer):
    """P(A | a, b) = P(B | b, a) exactly, for any weights (here MiniLM with a fresh score head): the two
    responses are scored separately by the same backbone, and only their difference matters."""
    from tunelab.config.schema import ModelConfig
    from tunelab.models.hardware import detect_hardware
    from tunelab.models.loading import load_model

    task = _task(architecture="reward", swap_tta=False)
    task.fit(_pairs([0, 1]))
    torch.manual_seed(0)
    model = load_model(ModelConfig(name_or_path="all-minilm-l6-v2"), task.head, detect_hardware(ModelConfig(name_or_path="all-minilm-l6-v2", device="cpu")),
                       task.head_kwargs(), tokenizer=tokenizer, for_training=False, dtype=torch.float32)
    frame = pd.DataFrame({"prompt": ["How do I reset my card PIN?"] * 3,
                          "response_a": ["Open the app, choose Card, then Reset PIN.", "No.", "Call us."],
                          "response_b": ["I cannot help with that.", "Sure, here is how: open settings.",
                                         "Visit a branch with your ID and we will reset it."]})
    probs = task.predict_proba(model, tokenizer, frame)
    swapped = task.predict_proba(model, tokenizer, swap_frame(frame))
    np.testing.assert_allclose(probs, swapped[:, ::-1], atol=1e-6)
    assert not np.allclose(probs[:, 0], 0.5, atol=1e-4)  # the random head does prefer some responses
    examples = task.encode(frame.assign(label=[0, 1, 0]), tokenizer, max_length=24)
    assert all(len(e["input_ids"]) <= 24 and len(e["input_ids_b"]) <= 24 for e in examples)
    batch = task.collate(tokenizer)(examples)
    assert batch["input_ids"].shape[0] == 6 and batch["labels"].tolist() == [0, 1, 0]  # a0, b0, a1, b1, ...
