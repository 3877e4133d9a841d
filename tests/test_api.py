"""The Python API under every front end: saved held-out split, test mode, capabilities, ensembles, exports,
reproducibility, and the bf16 / fp32 paths forced on any CPU.

Mechanics run on a tiny random Llama (built from a config, SmolLM2's real tokenizer) and the shipped real
QA sample, so each run takes seconds; the real-model end-to-end runs are in test_sft_e2e/test_classify.
"""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

import tunelab
from tunelab.config import build_config
from tunelab.errors import UserError
from tunelab.resources import resource_path

from conftest import tiny_sft_raw

QA = resource_path("qa_en_instructions.csv")


def _sft_config(model_dir, out, data=QA, **train):
    return build_config(tiny_sft_raw(model_dir, out, data=data, **train))


def test_held_out_rows_are_the_rows_training_evaluated_even_after_a_row_is_dropped(tiny_llama, tmp_path):
    data = pd.read_csv(QA).iloc[:40]
    data.loc[2, "answer"] = "  "  # dropped by cleaning: every later row's position shifts, its row number must not
    data.to_csv(tmp_path / "qa.csv", index=False)
    result = tunelab.train(_sft_config(tiny_llama, tmp_path / "run", data=tmp_path / "qa.csv"))
    saved = json.loads((result.run_dir / "eval_rows.json").read_text())
    assert saved["source"] == str(tmp_path / "qa.csv") and 3 not in saved["rows"] and len(saved["rows"]) >= 5
    held_out = tunelab.held_out_rows(result.run_dir)
    assert [int(i) + 1 for i in held_out.index] == saved["rows"]
    # The held-out questions are the file's rows with those numbers, and none of them was trained on.
    assert held_out["question"].tolist() == [data.loc[r - 1, "question"] for r in saved["rows"]]
    report = json.loads((result.run_dir / "data_report.json").read_text())[0]
    assert report["empty"] == 1 and report["rows_used"] == 39 - len(saved["rows"])

    run = tunelab.load(result.run_dir)
    test = tunelab.run_test_mode(run, per_category=1, max_new_tokens=4)
    assert set(test.answers["question"]) <= set(held_out["question"]) and len(test.answers) >= 1
    assert (result.run_dir / "test_answers.json").exists()


def test_a_front_end_asks_capabilities_and_gets_a_clean_error(tiny_llama, tmp_path):
    from tunelab.tasks import get_task
    from tunelab.tasks.base import GenerativeTask, ProbabilisticTask, require_capability

    assert get_task("sft").capabilities() == ("generative",)
    assert get_task("summarize").capabilities() == ("generative",)
    assert get_task("classify").capabilities() == ("probabilistic",)
    assert get_task("preference").capabilities() == ("probabilistic",)
    sft = get_task("sft")(build_config({"task": "sft"}))
    with pytest.raises(UserError, match="ensembl.*needs a probabilistic task.*`sft` is generative"):
        require_capability(sft, ProbabilisticTask, "ensembling")
    assert require_capability(sft, GenerativeTask, "chat") is sft


def test_ensemble_weights_are_checked():
    from tunelab.api import normalise_weights

    assert normalise_weights(None, 4) == [0.25] * 4
    assert normalise_weights([3, 1], 2) == [0.75, 0.25]
    with pytest.raises(UserError, match="2 values for 3 runs"):
        normalise_weights([1, 1], 3)
    with pytest.raises(UserError, match="non-negative"):
        normalise_weights([1, -1], 2)
    with pytest.raises(UserError, match="at least two runs"):
        tunelab.ensemble(["only-one"], "data.csv")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_and_reload_in_each_precision(tiny_llama, tmp_path, dtype):
    """The bf16 paths (autocast, a frozen bf16 base under LoRA) run on every CPU when forced, slow but correct;
    fp32 is forced too, so a bf16 CPU covers the paths an AVX2-only CPU takes by default."""
    import torch

    from tunelab.models.hardware import cpu_has_fast_bf16

    result = tunelab.train(_sft_config(tiny_llama, tmp_path / "run", dtype=dtype))
    m = result.metrics
    assert m["eval_loss"] < m["eval_before_loss"]
    saved = tunelab.load_config(result.run_dir / "config.yaml")
    # Resolved, explicit, saved: bf16 only for generation on a CPU that runs bf16 fast (tests/test_generation.py).
    expected = "bfloat16" if dtype == "bfloat16" and cpu_has_fast_bf16() else "float32"
    assert saved.model.dtype == dtype and saved.model.predict_dtype == expected
    run = tunelab.load(result.run_dir)
    assert next(run.model.parameters()).dtype == getattr(torch, expected)
    answers = run.predict(tunelab.held_out_rows(run).iloc[:2])
    assert len(answers) == 2 and "prediction" in answers


def test_a_run_that_predicts_in_bf16_predicts_in_fp32_on_a_cpu_without_fast_bf16(tiny_llama, tmp_path, monkeypatch,
                                                                                   caplog):
    """Trained where bf16 is fast (forced here), the run saves predict_dtype bfloat16; loaded on an AVX2-only CPU
    (forced too) it predicts in fp32 and says so, unless bf16 is asked for at load time. On the CPU also on a
    CUDA host: the rule is about CPUs."""
    import torch

    from tunelab.models.hardware import cpu_has_fast_bf16

    monkeypatch.setenv("TUNELAB_CPU_BF16", "1")
    cpu_has_fast_bf16.cache_clear()
    try:
        config = _sft_config(tiny_llama, tmp_path / "run", max_steps=2)
        config.model.device = "cpu"
        result = tunelab.train(config)
        assert tunelab.load_config(result.run_dir / "config.yaml").model.predict_dtype == "bfloat16"
        assert next(tunelab.load(result.run_dir, device="cpu").model.parameters()).dtype == torch.bfloat16
        monkeypatch.setenv("TUNELAB_CPU_BF16", "0")
        cpu_has_fast_bf16.cache_clear()
        with caplog.at_level("WARNING", logger="tunelab.api"):
            run = tunelab.load(result.run_dir, device="cpu")
        assert next(run.model.parameters()).dtype == torch.float32
        assert "no fast bf16" in caplog.text and str(result.run_dir) in caplog.text
        assert len(run.predict(tunelab.held_out_rows(run).iloc[:1])) == 1
        forced = tunelab.load(result.run_dir, device="cpu", dtype="bfloat16")
        assert next(forced.model.parameters()).dtype == torch.bfloat16
    finally:
        cpu_has_fast_bf16.cache_clear()


def test_same_seed_gives_the_same_numbers_in_separate_processes(tiny_llama, tmp_path):
    code = ("import json, sys, tunelab\n"
            "from tunelab.config import build_config\n"
            "cfg = build_config(json.loads(sys.argv[1]))\n"
            "print('EVAL', repr(tunelab.train(cfg, echo=lambda *_: None).metrics['eval_loss']))\n")
    losses = []
    for i in range(2):
        raw = _sft_config(tiny_llama, tmp_path / f"run{i}").model_dump(mode="json")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_THREADS": "2"}
        out = subprocess.run([sys.executable, "-c", code, json.dumps(raw)], capture_output=True, text=True,
                             timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        losses.append(float(out.stdout.split("EVAL")[-1]))
    assert losses[0] == losses[1]


def test_load_never_turns_on_remote_code_from_the_run_config(tiny_llama, tmp_path, caplog):
    result = tunelab.train(_sft_config(tiny_llama, tmp_path / "run", max_steps=1))
    config_file = result.run_dir / "config.yaml"
    config_file.write_text(config_file.read_text().replace("trust_remote_code: false", "trust_remote_code: true"))
    run = tunelab.load(result.run_dir)
    assert run.config.model.trust_remote_code is False
    assert "trust_remote_code" in caplog.text
    assert tunelab.load(result.run_dir, trust_remote_code=True).config.model.trust_remote_code is True


def test_batched_generation_equals_one_prompt_at_a_time(smollm_tokenizer):
    """Real SmolLM2, greedy, fp32: left-padded batches must not change what each prompt generates. (In bf16, the
    default for generation on a fast-bf16 CPU, batch shape moves the last bits: bench/bench_generate.py counts
    the differences.)"""
    from tunelab.inference.engine import GenerationEngine

    run = tunelab.load_base("smollm2-135m-instruct", config=build_config(
        {"task": "sft", "model": {"name_or_path": "smollm2-135m-instruct", "predict_dtype": "float32"}}))
    questions = ["What is the capital of France?", "Name three primary colors.",
                 "Write one sentence about the sea, please, in simple words.", "2 + 2 ="]
    prompts = [smollm_tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                    add_generation_prompt=True) for q in questions]
    config = run.config.generation.model_copy(update={"max_new_tokens": 12, "do_sample": False, "batch_size": 4})
    batched = GenerationEngine(run.model, run.tokenizer, config).generate(prompts)
    single = [GenerationEngine(run.model, run.tokenizer, config).generate([p])[0] for p in prompts]
    assert batched == single
    assert all(text.strip() for text in batched)


@pytest.mark.e2e
def test_loading_a_lora_classifier_prints_no_missing_head_report(shared_data, tmp_path, capfd):
    """The fresh head's "MISSING / newly initialized" report is noise when the adapter restores the trained head."""
    rows = pd.read_csv(shared_data / "classification_banking77" / "train.csv").groupby("category").head(1).iloc[:40]
    rows.to_csv(tmp_path / "train.csv", index=False)
    result = tunelab.train(build_config({
        "task": {"name": "classify"}, "model": {"name_or_path": "all-minilm-l6-v2"},
        "data": {"train_path": str(tmp_path / "train.csv"), "columns": {"label": "category"}, "eval_fraction": 0},
        "lora": {"r": 4}, "train": {"max_steps": 1, "batch_size": 8, "max_length": 32,
                                    "output_dir": str(tmp_path / "run"), "estimate_steps": 0},
    }))
    capfd.readouterr()
    run = tunelab.load(result.run_dir)
    captured = capfd.readouterr()
    assert "MISSING" not in captured.err + captured.out
    assert run.task.classes == sorted(rows["category"].unique())


def test_quickstart_scores_answers_before_and_after_on_the_held_out_rows(tiny_llama, tmp_path):
    from tunelab.quickstart import run_quickstart

    result = run_quickstart(str(tmp_path / "qs"), {"model.name_or_path": str(tiny_llama), "train.max_steps": 2,
                                                   "generation.max_new_tokens": 4, "data.max_rows": 60},
                            echo=lambda *_: None)
    held_out = tunelab.held_out_rows(result.run_dir)
    assert result.answers["question"].tolist() == held_out["question"].tolist()
    for column in ("rougeL_before", "rougeL_after"):
        assert result.answers[column].between(0, 1).all()
    assert result.rouge_l == pytest.approx((result.answers["rougeL_before"].mean(), result.answers["rougeL_after"].mean()))
    saved = pd.read_csv(result.run_dir / "quickstart_samples.csv")
    assert len(saved) == len(held_out) and "eval_before_loss" in result.metrics


def test_loss_curves_start_eval_at_step_0_and_smooth_train_loss():
    from tunelab.training.callbacks import loss_curves

    history = [{"step": 0, "eval_before_loss": 3.0}, {"step": 1, "loss": 2.0}, {"step": 2, "loss": 4.0},
               {"step": 2, "eval_loss": 2.5}, {"step": 4, "loss": 1.0}, {"step": 4, "eval_loss": 2.0},
               {"step": 4, "eval_loss": 2.0, "after_training": True}]
    curves = loss_curves(history, smoothing=0.5)
    assert curves["eval"] == [(0, 3.0), (2, 2.5), (4, 2.0)]
    assert curves["train"] == [(1, 2.0), (2, 4.0), (4, 1.0)]
    # bias-corrected EMA: the first point is the first value itself
    assert curves["train_smoothed"][0] == (1, pytest.approx(2.0))
    assert curves["train_smoothed"][1] == (2, pytest.approx((0.25 * 2.0 + 0.5 * 4.0) / 0.75))
