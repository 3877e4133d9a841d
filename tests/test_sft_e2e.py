"""End to end on the real packaged SmolLM2 and real data (the shipped self-instruct sample):
train with LoRA, check eval loss went down and the run directory is complete, then use the run."""
import json

import pandas as pd
import pytest

import tunelab
from tunelab.config import build_config
from tunelab.resources import resource_path

pytestmark = pytest.mark.e2e


def small_config(tmp_path, **train):
    data = pd.read_csv(resource_path("qa_en_instructions.csv"))
    data = data[data["answer"].str.len() < 200].head(60)
    path = tmp_path / "qa.csv"
    data.to_csv(path, index=False)
    return build_config({
        "task": "sft",
        "model": {"name_or_path": "smollm2-135m-instruct"},
        "data": {"train_path": str(path), "eval_fraction": 0.15, "stratify_by": None},
        "lora": {"r": 8, "alpha": 16},
        "train": {"preset": "fast", "max_steps": 10, "batch_size": 4, "learning_rate": 1e-3, "max_length": 128,
                  "logging_steps": 2, "output_dir": str(tmp_path / "run"), **train},
        "generation": {"max_new_tokens": 16},
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    lines = []
    result = tunelab.train(small_config(tmp), echo=lines.append)
    assert any(line.startswith("estimated training time:") for line in lines), lines  # measured from real steps
    return result, tmp


def test_eval_loss_goes_down_and_run_dir_is_complete(trained):
    result, _ = trained
    run = result.run_dir
    m = json.loads((run / "metrics.json").read_text())
    assert m["eval_loss"] < m["eval_before_loss"] - 0.05, m
    for name in ("config.yaml", "task_state.json", "data_report.json", "history.jsonl", "metrics.json", "plots/loss.png",
                 "final/adapter_config.json", "final/adapter_model.safetensors", "final/tokenizer.json"):
        assert (run / name).exists(), name
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in history if "loss" in r]
    assert train_steps[:3] == [1, 2, 4] and all(isinstance(r["loss"], float) for r in history if "loss" in r)
    assert any("eval_loss" in r for r in history)
    assert (run / "plots/loss.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((run / "data_report.json").read_text())[0]
    assert report["rows_read"] == 60 and report["rows_used"] == 51
    assert all(r["peak_rss_gb"] > 0.2 for r in history)  # memory monitoring in every row


def test_load_and_generate_from_the_run(trained, cli, tmp_path):
    result, _ = trained
    run = tunelab.load(result.run_dir)
    assert run.task.name == "sft" and not hasattr(run.model, "peft_config")  # adapter merged for inference
    questions = tmp_path / "q.csv"
    pd.DataFrame({"question": ["Write a haiku about rain.", "Say hello."]}).to_csv(questions, index=False)
    out = tmp_path / "answers.jsonl"
    code, output, _ = cli("generate", result.run_dir, "--data", questions, "--output", out, "--max-new-tokens", 12)
    assert code == 0, output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["prediction"].strip() for r in rows)
    assert "Write a haiku about rain." in rows[0]["prompt"]
    code, output, _ = cli("generate", result.run_dir, "--data", questions, "--output", out)
    assert code == 2 and "exists" in output  # never overwrites silently


def test_test_mode_answers_held_out_questions(trained, cli):
    result, _ = trained
    code, output, _ = cli("test", result.run_dir, "--max-new-tokens", 8)
    assert code == 0, output
    saved = json.loads((result.run_dir / "test_answers.json").read_text())
    assert saved["tokens_per_second"] > 0 and len(saved["answers"]) >= 3
    assert all(a["answer"].strip() for a in saved["answers"])


def test_chat_streams_and_resets(trained, cli):
    result, _ = trained
    code, output, _ = cli("chat", result.run_dir, "--greedy", "--max-new-tokens", 8, input="Hello\n/reset\n/exit\n")
    assert code == 0, output
    assert "bot> " in output and "(history cleared)" in output
    reply = output.split("bot> ", 1)[1].split("\n", 1)[0]
    assert reply.strip()


def test_existing_run_dir_is_not_overwritten(trained):
    result, tmp = trained
    with pytest.raises(tunelab.UserError, match="already holds a run"):
        tunelab.train(small_config(tmp), echo=lambda s: None)


def test_resume_continues_an_interrupted_run(tmp_path, monkeypatch):
    from tunelab.training.trainer import TunelabTrainer

    config = small_config(tmp_path, max_steps=6, save_steps=3, logging_steps=1)
    original = TunelabTrainer.training_step
    calls = {"n": 0}

    def crash_after_four_steps(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TunelabTrainer, "training_step", crash_after_four_steps)
    with pytest.raises(KeyboardInterrupt):
        tunelab.train(config, echo=lambda s: None)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "checkpoint-3").exists() and not (run / "final").exists()
    monkeypatch.setattr(TunelabTrainer, "training_step", original)

    result = tunelab.train(config, resume=True, echo=lambda s: None)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in history if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # step 4 logged once, not twice
    assert result.metrics["train_steps"] == 6 and (run / "final" / "adapter_config.json").exists()
    assert "eval_before_loss" in result.metrics  # carried over from the interrupted run
