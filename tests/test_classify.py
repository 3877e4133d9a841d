"""Classification task: templates, MAP misconception processor, labels, predictions; e2e on real data and models."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunelab.config import build_config
from tunelab.errors import UserError
from tunelab.tasks.classify import ClassifyTask
from tunelab.tasks.map_misconception import CORRECTNESS_FIELD, MapMisconceptionProcessor

SHARED = Path(os.environ.get("TUNELAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BANKING = SHARED / "classification_banking77"


def _config(task=None, **sections):
    return build_config({"task": {"name": "classify", **(task or {})}, "model": {"name_or_path": "all-minilm-l6-v2"}, **sections})


def _map_frame() -> pd.DataFrame:
    # Question 1: the correct answer is "1/3" (3 of 4 True_ rows chose it; one True_ row is noise).
    # Question 2: the correct answer is "6".
    return pd.DataFrame({
        "row_id": [1, 2, 3, 4, 5, 6, 7, 8],
        "QuestionId": [1, 1, 1, 1, 1, 2, 2, 2],
        "QuestionText": ["What is 1/6 + 1/6?"] * 5 + ["What is 2 x 3?"] * 3,
        "MC_Answer": ["1/3", "1/3", "2/12", "1/3", "2/6", "6", "5", "6"],
        "StudentExplanation": ["add tops", "1+1 over 6 simplified", "add tops and bottoms", "simplify", "wrong",
                               "times", "add", "2 threes"],
        "Category": ["True_Correct", "True_Neither", "False_Misconception", "True_Correct", "True_Neither",
                     "True_Correct", "False_Misconception", "True_Correct"],
        "Misconception": ["NA", "NA", "Adding_across", "", "NA", "NA", "Additive", "NA"],
    })


def test_map_processor_learns_correct_answers_and_applies_them():
    proc = MapMisconceptionProcessor()
    frame = proc.prepare(_map_frame(), "train")
    assert frame["label"].tolist()[:4] == ["True_Correct:NA", "True_Neither:NA", "False_Misconception:Adding_across",
                                           "True_Correct:NA"]  # empty misconception -> NA
    proc.fit(frame)
    assert proc.correct_answer == {"1": "1/3", "2": "6"}
    test = pd.DataFrame({"QuestionId": [1, 1, 2, 3], "MC_Answer": ["1/3", "2/12", "5", "7"],
                         "QuestionText": ["q"] * 4, "StudentExplanation": ["e"] * 4})
    out = proc.transform(test)
    assert out[CORRECTNESS_FIELD].tolist() == [
        "The student's answer is correct.", "The student's answer is incorrect.",
        "The student's answer is incorrect.", "Whether the student's answer is correct is unknown."]
    restored = MapMisconceptionProcessor()
    restored.load_state(json.loads(json.dumps(proc.state())))
    assert restored.transform(test)[CORRECTNESS_FIELD].equals(out[CORRECTNESS_FIELD])


def test_map_task_prompt_contains_feature_and_writes_kaggle_file(tmp_path):
    from tunelab.io.submission import check_submission

    task = ClassifyTask(_config({"processor": "map_misconception", "template": "detailed"}))
    train = task.prepare(_map_frame(), "train")
    task.fit(train)
    assert task.id_field == "row_id"
    texts = task.texts(train, tokenizer=None)
    assert texts[2] == ("Question text: What is 1/6 + 1/6?\nMc answer: 2/12\n"
                        "Answer correctness: The student's answer is incorrect.\nStudent explanation: add tops and bottoms")
    probs = np.tile(np.linspace(1, 2, len(task.classes)), (len(train), 1))
    probs /= probs.sum(axis=1, keepdims=True)
    predictions = task.predictions_frame(train, probs)
    path = task.write_predictions(predictions, tmp_path / "sub.csv", "map")
    check_submission(path, "map", expected_ids=train["row_id"])
    first = pd.read_csv(path).iloc[0]
    assert first["row_id"] == 1
    assert first["Category:Misconception"].split() == task.classes[::-1][:3]


def test_templates_basic_detailed_instruction_custom():
    frame = pd.DataFrame({"title": ["Cats"], "body": ["They purr."], "label": ["pets"]})
    def render(**opts):
        return ClassifyTask(_config({"text_fields": ["title", "body"], **opts})).texts(frame, tokenizer=None)[0]
    assert render() == "Cats\nThey purr."
    assert render(template="detailed", field_labels={"body": "Text"}) == "Title: Cats\nText: They purr."
    assert render(template="instruction", instruction="Pick a topic.") == "Pick a topic.\n\nTitle: Cats\nBody: They purr.\nAnswer:"
    assert render(template="mine", templates={"mine": "[{title}] {body}"}) == "[Cats] They purr."
    with pytest.raises(UserError, match=r"task.templates.bad: field `\{nope\}` is not in the data"):
        render(template="bad", templates={"bad": "{nope}"})


def test_instruction_template_uses_chat_template():
    from tunelab.config.schema import ModelConfig
    from tunelab.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path="smollm2-135m-instruct"))
    task = ClassifyTask(_config({"template": "instruction"}))
    text = task.texts(pd.DataFrame({"text": ["hello"]}), tokenizer)[0]
    assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")


def test_config_errors_name_the_key():
    with pytest.raises(UserError, match=r"unknown template `detaled` \(did you mean `detailed`\?\)"):
        _config({"template": "detaled"})
    with pytest.raises(UserError, match="unknown processor `map`"):
        _config({"processor": "map"})


def test_unknown_eval_label_names_row_and_label():
    task = ClassifyTask(_config())
    task.fit(pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}))
    eval_frame = pd.DataFrame({"text": ["c", "d"], "label": ["x", "z"]}, index=[6, 7])
    with pytest.raises(UserError, match=r"row 8: label `z` never occurs in the training data"):
        task.encode(eval_frame, _FakeTokenizer(), 16)
    skipping = ClassifyTask(_config({"unknown_labels": "skip"}))
    skipping.fit(pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}))
    assert [e["labels"] for e in skipping.encode(eval_frame, _FakeTokenizer(), 16)] == [0]
    assert task.head_kwargs()["id2label"] == {0: "x", 1: "y"}


def _spaced_task(**opts) -> ClassifyTask:
    task = ClassifyTask(_config(opts))
    task.fit(pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["card arrival", "lost_card", "top up", "pin"]}))
    return task


def test_labels_with_spaces_stay_whole_and_the_map_format_refuses_them_by_name(tmp_path):
    """Top-k labels once travelled as one space-joined string and were split again for the MAP writer:
    `card arrival` silently became two labels, `card` and `arrival`, and the submission check passed."""
    task = _spaced_task()
    frame = pd.DataFrame({"id": [10, 11], "text": ["x", "y"]})
    probs = np.array([[0.6, 0.3, 0.05, 0.05], [0.1, 0.2, 0.3, 0.4]])  # classes: card arrival, lost_card, pin, top up
    predictions = task.predictions_frame(frame, probs)
    assert predictions["top_k"].tolist() == [["card arrival", "lost_card", "pin"], ["top up", "pin", "lost_card"]]
    with pytest.raises(UserError, match=r"label `card arrival` contains a space"):
        task.write_predictions(predictions, tmp_path / "sub.csv", "map")
    assert not (tmp_path / "sub.csv").exists()
    # CSV keeps a readable, unambiguous top-k column (a JSON list) and the first label is the prediction.
    written = pd.read_csv(task.write_predictions(predictions, tmp_path / "pred.csv", "csv"))
    assert [json.loads(v) for v in written["top_k"]] == predictions["top_k"].tolist()
    assert (written["prediction"] == [json.loads(v)[0] for v in written["top_k"]]).all()
    rows = [json.loads(line) for line in task.write_predictions(predictions, tmp_path / "p.jsonl", "jsonl").read_text().splitlines()]
    assert rows[0]["top_k"] == ["card arrival", "lost_card", "pin"]
    # Configured for MAP output, training stops before any work, naming the label.
    with pytest.raises(UserError, match=r"task.output_format is map: label `card arrival` contains a space"):
        _spaced_task(output_format="map")


def _review_frames(n_train=60, n_eval=60, n_classes=6, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"intent_{i}" for i in range(n_classes)]
    def frame(n):
        y = rng.integers(0, n_classes, n)
        return pd.DataFrame({"text": [f"please help with {names[c]} now {rng.integers(1000)}" for c in y],
                             "label": [names[c] for c in y]})
    return frame(n_train), frame(n_eval)


def test_review_calibrates_an_overconfident_model_and_predict_applies_it(monkeypatch, tmp_path):
    task = ClassifyTask(_config({"baseline": False}))
    train, held_out = _review_frames()
    task.fit(train)
    ids, _ = task.label_ids(held_out)
    rng = np.random.default_rng(1)
    guess = np.where(rng.random(len(ids)) < 0.7, ids, (ids + 1) % len(task.classes))  # 70% right ...
    logits = np.full((len(ids), len(task.classes)), 0.0)
    logits[np.arange(len(ids)), guess] = 12.0                                           # ... and sure of it
    from tunelab.metrics.classification import softmax

    raw = softmax(logits)
    monkeypatch.setattr(ClassifyTask, "raw_proba", lambda self, model, tokenizer, frame: raw[: len(frame)])
    metrics, predictions, lines = task.review(None, None, train, held_out, run_dir=tmp_path)
    assert task.temperature > 2.0 and metrics["temperature"] == pytest.approx(task.temperature, rel=1e-5)
    assert metrics["log_loss"] < metrics["log_loss_uncalibrated"] - 1.0
    assert metrics["accuracy"] == pytest.approx(0.7, abs=0.1)  # the ranking is untouched
    assert any(line.startswith("calibration: temperature") for line in lines)
    # Saved with the task state and applied by predict_proba after a reload.
    restored = ClassifyTask(_config())
    restored.load_state(json.loads(json.dumps(task.state())))
    np.testing.assert_allclose(restored.predict_proba(None, None, held_out),
                               predictions[[f"prob:{c}" for c in task.classes]].to_numpy(), atol=1e-12)
    # T = 1 is a no-op; calibrate: false leaves the model's probabilities alone.
    plain = ClassifyTask(_config({"baseline": False, "calibrate": False}))
    plain.fit(train)
    metrics, _, _ = plain.review(None, None, train, held_out, run_dir=None)
    assert plain.temperature == 1.0 and "temperature" not in metrics
    np.testing.assert_array_equal(plain.predict_proba(None, None, held_out), raw)


def test_collapse_is_said_during_training_at_the_evaluation_that_shows_it():
    """The trainer's eval metrics carry the spread and the prior; LearningWatch turns them into a warning line
    at that evaluation (not only in the end-of-run review)."""
    from types import SimpleNamespace

    from transformers import EvalPrediction

    from tunelab.training.callbacks import LearningWatch

    task = ClassifyTask(_config())
    train, held_out = _review_frames()
    task.fit(train)
    labels, _ = task.label_ids(held_out)
    constant = np.zeros((len(labels), len(task.classes)))
    constant[:, 0] = 3.0  # logits: always the first class
    metrics = task.trainer_metrics()(EvalPrediction(predictions=constant, label_ids=labels))
    assert metrics["distinct_top1"] == 1 and metrics["log_loss"] > metrics["prior_log_loss"]
    said = []
    watch = LearningWatch(said.append, len(task.classes), "likely causes: learning rate")
    eval_metrics = {f"eval_{k}": v for k, v in metrics.items()}
    watch.on_evaluate(None, SimpleNamespace(global_step=0, epoch=0.0), None, metrics=eval_metrics)
    assert said == []  # step 0 is the untrained model: nothing to warn about
    watch.on_evaluate(None, SimpleNamespace(global_step=40, epoch=1.0), None, metrics=eval_metrics)
    assert len(said) == 2 and "collapsed" in said[0] and "does not beat the class prior" in said[1]
    good = np.eye(len(task.classes))[labels] * 8.0  # confident and right
    fine = {f"eval_{k}": v for k, v in task.trainer_metrics()(EvalPrediction(predictions=good, label_ids=labels)).items()}
    watch.on_evaluate(None, SimpleNamespace(global_step=80, epoch=2.0), None, metrics=fine)
    assert len(said) == 2


def test_review_warns_loudly_when_the_model_collapsed(monkeypatch):
    task = ClassifyTask(_config())
    train, held_out = _review_frames()
    task.fit(train)
    constant = np.tile(np.r_[0.9, np.full(len(task.classes) - 1, 0.1 / (len(task.classes) - 1))], (len(held_out), 1))
    monkeypatch.setattr(ClassifyTask, "raw_proba", lambda self, model, tokenizer, frame: constant[: len(frame)])
    metrics, _, lines = task.review(None, None, train, held_out, run_dir=None)
    warnings = metrics["warnings"]
    assert any("collapsed: only 1 distinct top-1 label" in w for w in warnings), warnings
    assert any("does not beat the class prior" in w for w in warnings), warnings
    assert any("does not beat the TF-IDF + logistic regression baseline" in w for w in warnings), warnings
    assert all("learning rate" in w or "baseline" in w for w in warnings)  # likely causes are named
    assert sum(line.startswith("WARNING: ") for line in lines) == len(warnings)
    assert metrics["baseline_accuracy"] > 0.9  # the intents are in the text: TF-IDF finds them
    # A model that learned: no warnings.
    ids, _ = task.label_ids(held_out)
    good = np.full((len(ids), len(task.classes)), 0.01)
    good[np.arange(len(ids)), ids] = 0.95
    monkeypatch.setattr(ClassifyTask, "raw_proba", lambda self, model, tokenizer, frame: good[: len(frame)])
    assert task.review(None, None, train, held_out, run_dir=None)[0]["warnings"] == []


class _FakeTokenizer:
    def __call__(self, texts, truncation=True, max_length=16):
        return {"input_ids": [[1, 2]] * len(texts), "attention_mask": [[1, 1]] * len(texts)}


def _banking_sample(tmp_path: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    train = pd.read_csv(BANKING / "train.csv").sample(n_train, random_state=0)
    test = pd.read_csv(BANKING / "test.csv").sample(n_test, random_state=0)
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    return tmp_path / "train.csv", tmp_path / "test.csv"


@pytest.mark.e2e
@pytest.mark.skipif(not BANKING.exists(), reason=f"shared data not found: {BANKING}")
def test_minilm_banking77_beats_majority_baseline(tmp_path):
    from tunelab.training.recipe import train

    train_csv, test_csv = _banking_sample(tmp_path, 1200, 200)
    config = build_config({
        "task": {"name": "classify"},
        "model": {"name_or_path": "all-minilm-l6-v2"},
        "data": {"train_path": str(train_csv), "eval_path": str(test_csv), "columns": {"label": "category"}},
        "lora": {"enabled": False},
        "train": {"preset": "fast", "epochs": 2, "learning_rate": 1e-4, "batch_size": 32, "max_length": 32,
                  "warmup_ratio": 0.1, "scheduler": "linear", "output_dir": str(tmp_path / "run"),
                  "logging_steps": 10, "estimate_steps": 0},
    })
    lines: list[str] = []
    m = train(config, echo=lines.append).metrics
    # The default head starts as a linear probe on the frozen features (eval_before_*), and fine-tuning improves it.
    assert any("head initialised by a linear probe" in line for line in lines)
    assert m["eval_before_map@3"] > 0.5
    assert m["prior_map@3"] < 0.1 and m["prior_log_loss"] > 3.0
    assert m["map@3"] > m["prior_map@3"] + 0.3, m
    # The Trainer's metric (under its bf16 autocast where the CPU has it) ~ the metric from real predictions (fp32).
    assert m["eval_map@3"] == pytest.approx(m["map@3"], abs=0.01)
    assert 0 < m["macro_f1"] <= 1 and m["log_loss"] < m["eval_before_log_loss"]
    # Calibrated on the 200 held-out rows (never worse than uncalibrated there), the baseline beside it.
    assert m["log_loss"] <= m["log_loss_uncalibrated"] + 1e-9 and m["temperature"] > 0
    assert m["baseline_map@3"] > m["prior_map@3"] + 0.3 and isinstance(m["warnings"], list)
    assert any("calibration: temperature" in line for line in lines)


def _banking_few_classes(tmp_path: Path, n: int, n_classes: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """n training rows (and a test file without the label column) from the first `n_classes` intents."""
    train = pd.read_csv(BANKING / "train.csv")
    train = train[train["category"].isin(sorted(train["category"].unique())[:n_classes])].sample(n, random_state=seed)
    test = pd.read_csv(BANKING / "test.csv")
    test = test[test["category"].isin(set(train["category"]))].sample(24, random_state=seed)
    train.to_csv(tmp_path / "train.csv", index=False)
    test.drop(columns=["category"]).to_csv(tmp_path / "test_without_category.csv", index=False)
    return tmp_path / "train.csv", tmp_path / "test_without_category.csv"


def _saved_eval_probs(run_dir: Path, classes: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    saved = pd.read_json(run_dir / "eval_predictions.jsonl", lines=True)
    return saved, saved[[f"prob:{c}" for c in classes]].to_numpy()


@pytest.mark.e2e
@pytest.mark.skipif(not BANKING.exists(), reason=f"shared data not found: {BANKING}")
def test_smollm2_lora_classifier_reload_matches_the_trained_model(tmp_path):
    """Decoder LLM + LoRA: the score head trains in full and is saved with the adapter; `tunelab.load` (adapter
    merged in fp32, predicting in model.predict_dtype) gives the in-memory trained model's probabilities on the
    held-out rows (eval_predictions.jsonl, written by the recipe before anything was saved or reloaded)."""
    from typer.testing import CliRunner

    from tunelab.api import held_out_rows, load
    from tunelab.cli.main import app
    from tunelab.models import detect_hardware, load_model, load_tokenizer
    from tunelab.training.recipe import train

    train_csv, test_csv = _banking_few_classes(tmp_path, 60)
    config = build_config({
        "task": {"name": "classify", "template": "instruction", "instruction": "Which banking intent is this?"},
        "model": {"name_or_path": "smollm2-135m-instruct"},
        "data": {"train_path": str(train_csv), "eval_fraction": 0.2, "columns": {"label": "category"},
                 "stratify_by": "label", "seed": 7},
        "lora": {"enabled": True, "r": 8, "alpha": 16},
        "train": {"preset": "fast", "max_steps": 2, "learning_rate": 1e-3, "batch_size": 4, "max_length": 64,
                  "output_dir": str(tmp_path / "run"), "logging_steps": 2, "estimate_steps": 0, "seed": 7},
    })
    result = train(config, echo=lambda _: None)
    final = result.run_dir / "final"
    assert "score" in json.loads((final / "adapter_config.json").read_text())["modules_to_save"]

    run = load(result.run_dir)
    held_out = held_out_rows(run)
    saved, in_memory = _saved_eval_probs(result.run_dir, run.task.classes)
    assert saved["row"].tolist() == [int(i) + 1 for i in held_out.index]  # the same rows, same order
    reloaded = run.predict_proba(held_out)
    np.testing.assert_allclose(reloaded, in_memory, atol=1e-5)
    base = load_model(config.model, "sequence_classification", detect_hardware(config.model), run.task.head_kwargs(),
                      tokenizer=load_tokenizer(config.model), for_training=False)
    untrained_head = run.task.predict_proba(base, run.tokenizer, held_out)
    assert np.abs(reloaded - untrained_head).max() > 1e-3  # the trained score head really was restored
    # Through the CLI, on a test file without the label column: the probabilities of `load`.
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(app, ["predict", str(result.run_dir), "--data", str(test_csv), "--output", str(out)])
    assert res.exit_code == 0, res.output
    written = pd.read_csv(out)
    np.testing.assert_allclose(written[[f"prob:{c}" for c in run.task.classes]].to_numpy(),
                               run.predict_proba(test_csv), atol=1e-6)
    assert (written["prediction"] == written["top_k"].map(lambda v: json.loads(v)[0])).all()


@pytest.mark.e2e
@pytest.mark.skipif(not BANKING.exists(), reason=f"shared data not found: {BANKING}")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_minilm_lora_reload_reproduces_metrics_and_eval_predictions(tmp_path, dtype):
    """bf16 is forced even on CPUs without AVX512-BF16 (emulated there: slow, but correct)."""
    from tunelab.api import held_out_rows, load
    from tunelab.training.recipe import train

    train_csv, _ = _banking_few_classes(tmp_path, 200)
    config = build_config({
        "task": {"name": "classify"},
        "model": {"name_or_path": "all-minilm-l6-v2", "dtype": dtype},
        "data": {"train_path": str(train_csv), "eval_fraction": 0.2, "columns": {"label": "category"},
                 "stratify_by": "label"},
        "lora": {"enabled": True, "r": 4, "alpha": 8},
        "train": {"preset": "fast", "max_steps": 6, "learning_rate": 2e-3, "batch_size": 16, "max_length": 32,
                  "output_dir": str(tmp_path / "run"), "estimate_steps": 0},
    })
    result = train(config, echo=lambda _: None)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["temperature"] > 0 and "log_loss_uncalibrated" in metrics  # 40 held-out rows: calibrated
    run = load(result.run_dir)
    assert run.task.temperature == pytest.approx(metrics["temperature"], rel=1e-5)
    assert run.evaluate()["log_loss"] == pytest.approx(metrics["log_loss"], abs=1e-5)
    _, in_memory = _saved_eval_probs(result.run_dir, run.task.classes)
    np.testing.assert_allclose(run.predict_proba(held_out_rows(run)), in_memory, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_classify_run(tmp_path_factory):
    """A MiniLM classifier trained for one step (module-scoped: several CLI tests use it)."""
    if not BANKING.exists():
        pytest.skip(f"shared data not found: {BANKING}")
    from tunelab.training.recipe import train

    tmp_path = tmp_path_factory.mktemp("tiny_classify")
    train_csv, test_csv = _banking_few_classes(tmp_path, 60)
    config = build_config({
        "task": {"name": "classify", "baseline": False},
        "model": {"name_or_path": "all-minilm-l6-v2"},
        "data": {"train_path": str(train_csv), "eval_fraction": 0.0, "columns": {"label": "category"}},
        "lora": {"enabled": False},
        "train": {"preset": "fast", "max_steps": 1, "batch_size": 8, "max_length": 32,
                  "output_dir": str(tmp_path / "run"), "estimate_steps": 0},
    })
    return train(config, echo=lambda _: None).run_dir, test_csv


@pytest.mark.e2e
def test_cli_predict_on_a_test_file_without_the_mapped_label_column(tiny_classify_run, cli, tmp_path):
    run_dir, test_csv = tiny_classify_run
    assert "category" not in pd.read_csv(test_csv).columns  # the config maps label: category
    out = tmp_path / "pred.csv"
    code, output, _ = cli("predict", run_dir, "--data", test_csv, "--output", out)
    assert code == 0, output
    written = pd.read_csv(out)
    assert len(written) == 24 and "label" not in written.columns


@pytest.mark.e2e
@pytest.mark.parametrize("verb", ["chat", "test"])
def test_cli_generative_verbs_on_a_classify_run_exit_2_with_one_line(tiny_classify_run, cli, verb):
    run_dir, _ = tiny_classify_run
    code, output, result = cli(verb, run_dir, input="hello\n/exit\n")
    assert code == 2, output
    assert "Traceback" not in output and not isinstance(result.exception, (ValueError, TypeError, AttributeError))
    # transformers' "Loading weights" progress bar may precede it (the CLI loads the run before asking)
    lines = [line for line in output.strip().splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    assert "generative" in lines[0] and "`classify` is probabilistic" in lines[0], output


@pytest.mark.e2e
@pytest.mark.skipif(not BANKING.exists(), reason=f"shared data not found: {BANKING}")
def test_ensemble_and_offline_bundle(tmp_path):
    """Two tiny MiniLM runs (LoRA and full): the ensemble is the weighted mean of their probabilities, and an
    exported bundle (adapter merged) predicts like its run and loads with no base-model reference."""
    from typer.testing import CliRunner

    from tunelab.api import load
    from tunelab.cli.main import app
    from tunelab.training.recipe import train

    train_csv, test_csv = _banking_sample(tmp_path, 300, 20)
    runs = []
    for name, lora in (("lora", True), ("full", False)):
        config = build_config({
            "task": {"name": "classify", "template": "detailed"},
            "model": {"name_or_path": "all-minilm-l6-v2"},
            "data": {"train_path": str(train_csv), "eval_fraction": 0.0, "columns": {"label": "category"}},
            "lora": {"enabled": lora, "r": 4},
            "train": {"preset": "fast", "max_steps": 3, "learning_rate": 1e-3, "batch_size": 16, "max_length": 32,
                      "output_dir": str(tmp_path / name), "estimate_steps": 0},
        })
        runs.append(train(config).run_dir)
    runner = CliRunner()
    single = []
    for i, run_dir in enumerate(runs):
        out = tmp_path / f"p{i}.csv"
        assert runner.invoke(app, ["predict", str(run_dir), "--data", str(test_csv), "--output", str(out)]).exit_code == 0
        single.append(pd.read_csv(out))
    out = tmp_path / "ensemble.csv"
    res = runner.invoke(app, ["ensemble", *map(str, runs), "--data", str(test_csv), "--output", str(out), "--weights", "3,1"])
    assert res.exit_code == 0, res.output
    ensembled = pd.read_csv(out)
    prob_cols = [c for c in single[0].columns if c.startswith("prob:")]
    expected = 0.75 * single[0][prob_cols].to_numpy() + 0.25 * single[1][prob_cols].to_numpy()
    np.testing.assert_allclose(ensembled[prob_cols].to_numpy(), expected, atol=1e-6)
    assert runner.invoke(app, ["ensemble", *map(str, runs), "--data", str(test_csv), "--output", str(out),
                               "--weights", "1"]).exit_code == 2

    bundle = tmp_path / "bundle"
    res = runner.invoke(app, ["export", str(runs[0]), "--offline-bundle", str(bundle)])
    assert res.exit_code == 0, res.output
    assert (bundle / "final" / "config.json").exists() and not (bundle / "final" / "adapter_config.json").exists()
    assert (bundle / "task_state.json").exists() and (bundle / "README.md").exists()
    from_bundle = load(bundle)
    probs = from_bundle.task.predict_proba(from_bundle.model, from_bundle.tokenizer, from_bundle.read(test_csv))
    np.testing.assert_allclose(probs, single[0][prob_cols].to_numpy(), atol=1e-5)


def test_length_report_counts_truncation_and_draws_histogram(tmp_path):
    from tunelab.config.schema import ModelConfig
    from tunelab.lab.lengths import length_report
    from tunelab.models import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path="all-minilm-l6-v2"))
    task = ClassifyTask(_config())
    frame = pd.DataFrame({"text": ["hello"] * 8 + ["hello " * 30, "word " * 50]})
    lengths = task.input_lengths(frame, tokenizer)  # 3 tokens x8, then 32 and 52 tokens with [CLS]/[SEP]
    encoded = [len(e["input_ids"]) for e in task.encode(frame, tokenizer, max_length=512)]
    assert lengths == encoded  # the overlong check counts what training encodes, special tokens included
    report = length_report(lengths, max_length=16, png_path=tmp_path / "h.png")
    assert (report["rows"], report["min"], report["max"], report["p50"]) == (10, 3, 52, 3.0)
    assert report["truncated_rows"] == 2 and report["truncated_share"] == pytest.approx(0.2)
    assert "max_length=" in report["advice"]
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
