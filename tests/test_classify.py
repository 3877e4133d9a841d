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
        "train": {"preset": "fast", "epochs": 2, "learning_rate": 1e-3, "batch_size": 32, "max_length": 32,
                  "scheduler": "linear", "output_dir": str(tmp_path / "run"), "logging_steps": 10, "estimate_steps": 0},
    })
    m = train(config).metrics
    assert m["prior_map@3"] < 0.1
    assert m["map@3"] > m["prior_map@3"] + 0.3, m
    assert m["eval_map@3"] == pytest.approx(m["map@3"], abs=1e-6)  # Trainer metric == metric from real predictions
    assert 0 < m["macro_f1"] <= 1 and m["log_loss"] < m["eval_before_log_loss"]


@pytest.mark.e2e
@pytest.mark.skipif(not BANKING.exists(), reason=f"shared data not found: {BANKING}")
def test_smollm2_lora_classifier_saves_reloads_predicts_identically(tmp_path):
    """Decoder LLM + LoRA: the score head trains in full, is saved with the adapter, and reloads exactly."""
    from typer.testing import CliRunner

    from tunelab.api import load
    from tunelab.cli.main import app
    from tunelab.training.recipe import train

    train_csv, test_csv = _banking_sample(tmp_path, 80, 16)
    config = build_config({
        "task": {"name": "classify", "template": "instruction", "instruction": "Which banking intent is this?"},
        "model": {"name_or_path": "smollm2-135m-instruct"},
        "data": {"train_path": str(train_csv), "eval_fraction": 0.0, "columns": {"label": "category"}},
        "lora": {"enabled": True, "r": 8, "alpha": 16},
        "train": {"preset": "fast", "max_steps": 2, "learning_rate": 1e-3, "batch_size": 4, "max_length": 64,
                  "output_dir": str(tmp_path / "run"), "logging_steps": 2, "estimate_steps": 0},
    })
    result = train(config)
    final = result.run_dir / "final"
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert "score" in adapter_config["modules_to_save"]

    # The in-training model (fresh score head) must match what a reload produces.
    from tunelab.models import detect_hardware, load_model, load_tokenizer
    from peft import PeftModel

    run = load(result.run_dir)
    test_frame = run.read(test_csv)
    reloaded = run.task.predict_proba(run.model, run.tokenizer, test_frame)
    tokenizer = load_tokenizer(config.model)
    base = load_model(config.model, "sequence_classification", detect_hardware(config.model),
                      run.task.head_kwargs(), tokenizer=tokenizer, for_training=False)
    untrained_head = run.task.predict_proba(base, tokenizer, test_frame)
    unmerged = PeftModel.from_pretrained(base, str(final))
    direct = run.task.predict_proba(unmerged, tokenizer, test_frame)
    np.testing.assert_allclose(reloaded, direct, atol=1e-5)
    assert np.abs(reloaded - untrained_head).max() > 1e-3  # the trained score head really was restored
    # Through the CLI: same probabilities in the written file.
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(app, ["predict", str(result.run_dir), "--data", str(test_csv), "--output", str(out)])
    assert res.exit_code == 0, res.output
    written = pd.read_csv(out)
    np.testing.assert_allclose(written[[f"prob:{c}" for c in run.task.classes]].to_numpy(), reloaded, atol=1e-5)
    assert (written["prediction"] == written["top_k"].str.split(" ").str[0]).all()


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
