"""The classical TF-IDF + logistic-regression baseline beside classify/preference runs."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunelab.config import build_config
from tunelab.tasks.baseline import BASELINE_FILE, TfidfBaseline, length_features

SHARED = Path(os.environ.get("TUNELAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BANKING = SHARED / "classification_banking77"

TOPICS = {0: "my card was stolen and I need a new card", 1: "how long does a transfer take to arrive",
          2: "the exchange rate on my payment looks wrong"}


def _topic_texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    words = "please help me today thanks hello sorry urgent".split()
    return [f"{rng.choice(words)} {TOPICS[int(c)]} {rng.choice(words)}" for c in y], y


def test_text_baseline_learns_saves_and_reloads_without_pickle(tmp_path):
    texts, y = _topic_texts(120)
    baseline = TfidfBaseline("text", n_classes=4).fit(texts, y)  # class 3 never occurs in training
    test_texts, test_y = _topic_texts(30, seed=1)
    probs = baseline.predict_proba(test_texts)
    assert probs.shape == (30, 4) and np.allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(axis=1) == test_y).all() and probs[:, 3].max() < 0.01
    path = baseline.save(tmp_path / BASELINE_FILE)
    with np.load(path, allow_pickle=False) as data:  # arrays and JSON only: loading runs no code
        assert json.loads(str(data["header"]))["train_rows"] == 120
    np.testing.assert_allclose(TfidfBaseline.load(path).predict_proba(test_texts), probs, atol=1e-12)


def test_pair_baseline_is_swap_symmetric_and_learns_verbosity():
    rng = np.random.default_rng(0)
    short = [" ".join(rng.choice(["ok", "fine", "sure", "yes"], 3)) for _ in range(200)]
    long = [" ".join(rng.choice(["here", "is", "a", "detailed", "answer", "with", "steps"], 40)) for _ in range(200)]
    a_long = rng.random(200) < 0.5
    a = [l if s else t for l, t, s in zip(long, short, a_long)]
    b = [t if s else l for l, t, s in zip(long, short, a_long)]
    y = np.where(a_long, 0, 1)  # people prefer the longer answer
    baseline = TfidfBaseline("pair", n_classes=2).fit((a, b), y)
    probs = baseline.predict_proba((a[:20], b[:20]))
    assert (probs.argmax(axis=1) == y[:20]).all()
    swapped = baseline.predict_proba((b[:20], a[:20]))
    np.testing.assert_allclose(swapped, probs[:, ::-1], atol=1e-12)  # no position bias, by construction
    same = baseline.predict_proba((a[:5], a[:5]))
    np.testing.assert_allclose(same, 0.5, atol=1e-12)  # identical responses: a coin flip
    feats = length_features(["a b c"], ["a"])
    np.testing.assert_allclose(length_features(["a"], ["a b c"])[:, :3], -feats[:, :3])  # signed ones flip
    np.testing.assert_allclose(length_features(["a"], ["a b c"])[:, 3:], feats[:, 3:])   # absolute ones stay


@pytest.mark.e2e
@pytest.mark.skipif(not BANKING.exists(), reason=f"shared data not found: {BANKING}")
def test_banking77_baseline_is_well_above_the_prior():
    from tunelab.metrics.classification import accuracy, map_at_k
    from tunelab.tasks.classify import ClassifyTask

    task = ClassifyTask(build_config({"task": {"name": "classify"}, "model": {"name_or_path": "all-minilm-l6-v2"}}))
    train = pd.read_csv(BANKING / "train.csv").sample(2000, random_state=0).rename(columns={"category": "label"})
    test = pd.read_csv(BANKING / "test.csv").sample(400, random_state=0).rename(columns={"category": "label"})
    task.fit(train)
    ids, _ = task.label_ids(train)
    baseline = TfidfBaseline("text", len(task.classes)).fit(task.baseline_inputs(train), ids)
    probs = baseline.predict_proba(task.baseline_inputs(test))
    test_ids, known = task.label_ids(test)
    prior = np.array([task.label_counts.get(c, 0) for c in task.classes], dtype=float)
    prior_acc = np.mean(test_ids[known] == prior.argmax())
    assert prior_acc < 0.05
    assert accuracy(test_ids[known], probs[known]) > 0.7
    assert map_at_k(test_ids[known], probs[known], 3) > 0.8


def _banking_run_config(tmp_path, n_train=300, **task):
    train = pd.read_csv(BANKING / "train.csv")
    train = train[train["category"].isin(sorted(train["category"].unique())[:6])].sample(n_train, random_state=0)
    train.to_csv(tmp_path / "train.csv", index=False)
    return build_config({
        "task": {"name": "classify", **task},
        "model": {"name_or_path": "all-minilm-l6-v2"},
        "data": {"train_path": str(tmp_path / "train.csv"), "eval_fraction": 0.2, "columns": {"label": "category"},
                 "stratify_by": "label"},
        "lora": {"enabled": False},
        "train": {"preset": "fast", "max_steps": 2, "learning_rate": 1e-4, "batch_size": 16, "max_length": 32,
                  "output_dir": str(tmp_path / "run"), "estimate_steps": 0},
    })


@pytest.mark.e2e
@pytest.mark.skipif(not BANKING.exists(), reason=f"shared data not found: {BANKING}")
def test_run_fits_the_baseline_on_its_train_split_only_and_reports_it(tmp_path, monkeypatch):
    from tunelab.api import held_out_rows
    from tunelab.training.recipe import train

    fitted: list[list[str]] = []
    original = TfidfBaseline.fit

    def spy(self, inputs, labels):
        fitted.append(list(inputs))
        return original(self, inputs, labels)

    monkeypatch.setattr(TfidfBaseline, "fit", spy)
    lines: list[str] = []
    result = train(_banking_run_config(tmp_path), echo=lines.append)
    held_out = held_out_rows(result.run_dir)
    source = pd.read_csv(tmp_path / "train.csv")
    assert len(fitted) == 1
    assert sorted(t.strip() for t in fitted[0]) == sorted(source.drop(index=held_out.index)["text"].str.strip())  # the train split
    assert not set(fitted[0]) & set(held_out["text"])                                          # no held-out row
    m = json.loads((result.run_dir / "metrics.json").read_text())
    assert m["baseline_train_rows"] == len(source) - len(held_out)
    for key in ("accuracy", "macro_f1", "log_loss", "map@3"):
        assert f"baseline_{key}" in m and key in m
    assert m["baseline_accuracy"] > 0.5  # 6 distinct intents: TF-IDF separates them
    assert any(line.strip().startswith("map@3") and "baseline" not in line for line in lines)  # the comparison table
    assert (result.run_dir / BASELINE_FILE).exists()
    # The saved baseline reproduces its reported metrics (what `ensemble RUN baseline:RUN` would use).
    from tunelab.api import load

    run = load(result.run_dir)
    probs = run.task.baseline_proba(result.run_dir, held_out)
    ids, known = run.task.label_ids(held_out)
    assert run.task.metrics_from_probs(ids[known], probs[known])["log_loss"] == pytest.approx(m["baseline_log_loss"], abs=1e-9)


@pytest.mark.e2e
@pytest.mark.skipif(not BANKING.exists(), reason=f"shared data not found: {BANKING}")
def test_baseline_false_skips_it(tmp_path):
    from tunelab.training.recipe import train

    result = train(_banking_run_config(tmp_path, n_train=120, baseline=False), echo=lambda _: None)
    assert not any(k.startswith("baseline_") for k in result.metrics)
    assert not (result.run_dir / BASELINE_FILE).exists()
