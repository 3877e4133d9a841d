"""Summarization task: prompts, augmentation, truncation, eval API/CLI, in-training ROUGE, end to end on SmolLM2 + DialogSum."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tunelab.config import build_config
from tunelab.errors import UserError
from tunelab.tasks import get_task
from tunelab.tasks.formatting import IGNORE_INDEX

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DIALOGSUM = Path(__file__).resolve().parents[2] / "shared" / "data" / "summarization_dialogsum"
needs_dialogsum = pytest.mark.skipif(not (DIALOGSUM / "dialogsum.dev.jsonl").exists(),
                                     reason=f"DialogSum (CC BY-NC-SA, not shipped) not found at {DIALOGSUM}")

DIALOGUE = "#Person1#: Are you coming to the party tonight?\n#Person2#: Yes, I'll bring a cake."
SUMMARY = "#Person2# will bring a cake to the party."


def make_task(**task_options):
    config = build_config({"task": {"name": "summarize", **task_options}, "model": {"name_or_path": "smollm2-135m-instruct"}})
    return get_task("summarize")(config)


@pytest.fixture(scope="module")
def tokenizer():
    from tunelab.config.schema import ModelConfig
    from tunelab.models.loading import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="smollm2-135m-instruct"))


def row(**extra):
    return pd.Series({"dialogue": DIALOGUE, "summary": SUMMARY, **extra}, name=0)


def decoded_labels(example, tokenizer) -> str:
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


# -- config and rows ---------------------------------------------------------------------
def test_config_validation_names_the_key():
    with pytest.raises(UserError, match="instruction_template"):
        make_task(instruction_template="### Input:\n{text}")
    with pytest.raises(UserError, match="augmentation"):
        make_task(augmentation="all")
    with pytest.raises(UserError, match="unknown key `task.eval_every`"):
        make_task(eval_every=5)


def test_references_collect_summary_and_numbered_columns_in_order():
    task = make_task()
    r = pd.Series({"dialogue": DIALOGUE, "summary10": "ten", "summary2": "two", "summary1": "one", "summary3": " "}, name=4)
    assert task.references(r) == ["one", "two", "ten"]
    assert task.reference(r) == "one"
    assert task.references(row(summary1="alt")) == [SUMMARY, "alt"]
    with pytest.raises(UserError, match="row 5: no reference summary"):
        task.references(pd.Series({"dialogue": DIALOGUE, "summary": ""}, name=4))


def test_instruction_format_renders_sections_and_trains_on_summary_only(tokenizer):
    task = make_task(format="instruction", augmentation="none", instructions=["Summarize this."])
    prompt, completion = task.prompt_completion(row())
    assert prompt == f"### Instruction:\nSummarize this.\n\n### Input:\n{DIALOGUE}\n\n### Response:\n"
    assert completion == SUMMARY
    [example] = task.encode(pd.DataFrame([row()]), tokenizer, 256)
    assert decoded_labels(example, tokenizer) == SUMMARY + tokenizer.eos_token
    assert task.generation_prompt(row(), tokenizer) == prompt


def test_chat_format_uses_chat_template_and_system_prompt(tokenizer):
    task = make_task(format="chat", augmentation="none", system_prompt="You summarize dialogues.")
    [example] = task.encode(pd.DataFrame([row()]), tokenizer, 256)
    text = tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\nYou summarize dialogues.<|im_end|>\n<|im_start|>user\nSummarize the following dialogue.\n\n#Person1#")
    assert decoded_labels(example, tokenizer) == SUMMARY + "<|im_end|>"
    prompt = task.generation_prompt(row(), tokenizer)
    assert prompt.endswith("<|im_start|>assistant\n") and SUMMARY not in prompt


def test_chat_format_without_template_is_a_user_error(tokenizer):
    task = make_task(format="chat")
    saved, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        with pytest.raises(UserError, match="no chat template.*format: instruction"):
            task.encode(pd.DataFrame([row()]), tokenizer, 256)
    finally:
        tokenizer.chat_template = saved


def test_augmentation_expand_sample_none(tokenizer):
    phrasings = ["Summarize A.", "Summarize B.", "Summarize C."]
    frame = pd.DataFrame([{"dialogue": f"#Person1#: line {i}", "summary": f"s{i}"} for i in range(30)])

    def used(task):
        return [next(p for p in phrasings if p in tokenizer.decode(e["input_ids"])) for e in task.encode(frame, tokenizer, 128)]

    expand = used(make_task(format="instruction", instructions=phrasings, augmentation="expand"))
    assert len(expand) == 90 and expand[:3] == phrasings
    sample = used(make_task(format="instruction", instructions=phrasings, augmentation="sample"))
    assert len(sample) == 30 and set(sample) == set(phrasings)  # one per row, all phrasings in use
    assert sample == used(make_task(format="instruction", instructions=phrasings, augmentation="sample"))  # seeded
    assert used(make_task(format="instruction", instructions=phrasings, augmentation="none")) == [phrasings[0]] * 30
    # generation always uses the first phrasing
    assert phrasings[0] in make_task(format="instruction", instructions=phrasings).generation_prompt(frame.iloc[3], tokenizer)


def test_long_dialogue_is_cut_so_the_summary_survives(tokenizer):
    task = make_task(format="instruction", augmentation="none")
    long = pd.DataFrame([{"dialogue": "\n".join(f"#Person1#: sentence number {i} about the weather." for i in range(200)),
                          "summary": SUMMARY}])
    [example] = task.encode(long, tokenizer, 128)
    assert len(example["input_ids"]) <= 128
    assert decoded_labels(example, tokenizer) == SUMMARY + tokenizer.eos_token
    assert "### Response:" in tokenizer.decode(example["input_ids"])


def test_metric_for_best_model_and_in_training_generation_follow_eval_generation_every(tokenizer):
    assert make_task().metric_for_best_model() == ("loss", False)
    assert make_task().in_training_generation() is None
    task = make_task(eval_generation_every=5, eval_generation_samples=2)
    assert task.metric_for_best_model() == ("rougeL", True)
    assert task.in_training_generation() == (5, 2)
    assert task.capabilities() == ("generative",)


# -- in-training ROUGE with a tiny random model (mechanics) ---------------------------------
def test_generation_callback_adds_rouge_to_logged_metrics_and_best_checkpoint(tokenizer, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from tunelab.training.trainer import TunelabTrainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    task = make_task(format="instruction", augmentation="none", eval_generation_every=2, eval_generation_samples=2)
    task.config.generation.max_new_tokens = 4
    frame = pd.DataFrame([{"dialogue": f"#Person1#: hello {i}", "summary": f"greeting {i}"} for i in range(4)])
    examples = task.encode(frame, tokenizer, 64)
    metric, greater = task.metric_for_best_model()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, eval_strategy="steps",
                             eval_steps=4, save_strategy="steps", save_steps=4, load_best_model_at_end=True,
                             metric_for_best_model=metric, greater_is_better=greater, report_to="none", use_cpu=True,
                             logging_steps=1, disable_tqdm=True)
    from tunelab.training.generation_eval import GenerationEvalCallback

    every, rows = task.in_training_generation()
    trainer = TunelabTrainer(model=model, args=args, data_collator=task.collate(tokenizer), train_dataset=examples,
                             eval_dataset=examples, callbacks=[GenerationEvalCallback(task, tokenizer, frame.iloc[:rows], every)])
    before = trainer.evaluate(metric_key_prefix="eval_before")
    assert 0.0 <= before["eval_before_rougeL"] <= 1.0 and "eval_before_rouge2" in before
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_rougeL" in h]
    assert [h["step"] for h in evals] == [2, 4]  # forced every 2 steps although eval_steps=4
    assert trainer.state.best_metric == max(h["eval_rougeL"] for h in evals)
    assert trainer.state.best_model_checkpoint is not None  # forced saves keep the best step loadable


# -- eval API / CLI errors ------------------------------------------------------------------
def test_eval_rejects_bad_arguments(tmp_path):
    from tunelab.evaluation import evaluate_generation

    with pytest.raises(UserError, match="nothing to evaluate"):
        evaluate_generation(tmp_path / "x.jsonl")
    with pytest.raises(UserError, match="not both"):
        evaluate_generation(tmp_path / "x.jsonl", run_dir=tmp_path, model="smollm2-135m-instruct")
    with pytest.raises(UserError, match="not a tunelab run"):
        evaluate_generation(tmp_path / "x.jsonl", run_dir=tmp_path)


def test_eval_missing_column_names_file_and_field(tmp_path):
    from tunelab.evaluation import evaluate_generation

    data = tmp_path / "d.csv"
    data.write_text("dialog,summary\nhi,hello\n")
    with pytest.raises(UserError, match=r"d\.csv: missing column `dialogue`"):
        evaluate_generation(data, model="smollm2-135m-instruct", task="summarize")


def test_eval_cli_maps_columns_via_config_and_reports_user_errors(tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("task: {name: summarize}\ndata: {columns: {dialogue: conv}}\n")
    data = tmp_path / "d.csv"
    data.write_text("text,summary\nhi,hello\n")
    result = CliRunner().invoke(app, ["eval", "--model", "smollm2-135m-instruct", "--config", str(cfg), "--data", str(data)])
    assert result.exit_code == 2
    assert "column `conv` (mapped to `dialogue`) not found" in result.output
    result = CliRunner().invoke(app, ["eval", "--model", "smollm2-135m-instruct", "--data", str(data), "--temperature", "-1"])
    assert result.exit_code == 2 and "temperature" in result.output


# -- real model, real data -------------------------------------------------------------------
@pytest.mark.e2e
@needs_dialogsum
def test_base_model_eval_on_dialogsum_test_multi_reference(tmp_path):
    from tunelab.evaluation import evaluate_generation

    result = evaluate_generation(DIALOGSUM / "dialogsum.test.jsonl", model="smollm2-135m-instruct", task="summarize",
                                 output_dir=tmp_path, max_rows=2, generation={"max_new_tokens": 24, "batch_size": 2})
    rows = [json.loads(line) for line in result.predictions_path.read_text().splitlines()]
    assert len(rows) == 2 and all(r["prediction"].strip() for r in rows)
    assert all(len(r["references"]) == 3 for r in rows)  # summary1..3
    saved = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert saved["rows"] == 2 and saved["generated_tokens"] > 0
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert saved[key] == pytest.approx(sum(r[key] for r in rows) / 2, abs=1e-3)  # mean of per-row scores
    assert 0.0 < saved["rouge1"] <= 1.0 and 0.0 < saved["rougeL"] <= 1.0 and 0.0 <= saved["rouge2"] <= 1.0


@pytest.mark.e2e
@needs_dialogsum
def test_finetune_smollm2_on_dialogsum_and_eval(tmp_path):
    from tunelab.evaluation import evaluate_generation
    from tunelab.training.recipe import train

    config = build_config({
        "task": {"name": "summarize", "eval_generation_every": 16, "eval_generation_samples": 4, "eval_max_rows": 4},
        "model": {"name_or_path": "smollm2-135m-instruct"},
        "data": {"train_path": str(DIALOGSUM / "dialogsum.dev.jsonl"), "max_rows": 72, "eval_fraction": 0.12},
        "train": {"preset": "fast", "max_steps": 16, "batch_size": 4, "max_length": 384, "learning_rate": 5e-4,
                  "output_dir": str(tmp_path / "run"), "eval_steps": 16, "logging_steps": 4, "estimate_steps": 0},
        "generation": {"max_new_tokens": 32, "batch_size": 4},
        "lora": {"r": 8, "alpha": 16},
    })
    result = train(config)
    m = result.metrics
    assert 60 <= m["train_examples"] <= 66 and m["train_steps"] == 16  # 72 rows minus the held-out eval rows
    assert m["eval_loss"] < m["eval_before_loss"]
    for key in ("rouge1", "rougeL", "rougeLsum"):  # final ROUGE on the eval rows, from real generations
        assert 0.0 < m[key] <= 1.0
    assert m["generated_rows"] == 4
    predictions = [json.loads(line) for line in (result.run_dir / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all(p["prediction"].strip() and "rougeL" in p for p in predictions)
    assert 0.0 < m["eval_rougeL"] <= 1.0 and 0.0 < m["eval_before_rougeL"] <= 1.0
    history = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert any("eval_rougeL" in h and h["step"] == 16 for h in history)

    out = evaluate_generation(DIALOGSUM / "dialogsum.test.jsonl", run_dir=result.run_dir, max_rows=2,
                              generation={"max_new_tokens": 32})
    assert out.output_dir == result.run_dir / "eval" / "dialogsum"
    rows = [json.loads(line) for line in out.predictions_path.read_text().splitlines()]
    assert len(rows) == 2 and all(r["prediction"].strip() for r in rows)
    assert 0.0 < out.metrics["rougeL"] <= 1.0
    assert json.loads(out.metrics_path.read_text())["run_dir"] == str(result.run_dir)
