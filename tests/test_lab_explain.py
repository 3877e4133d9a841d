"""`tunelab lab explain`: one real optimizer step, and the numbers it reports are the Trainer's own.

Mechanics on the tiny random Llama (SmolLM2's real tokenizer, the shipped QA sample): seconds. One check on the
packaged SmolLM2, the model people run it on.
"""
import math

import pytest
import torch

from tunelab.config import build_config
from tunelab.data.collate import IGNORE_INDEX

from conftest import tiny_sft_raw


def _step_checked_against_the_trainer(config, tmp_path):
    """Explain step 1 and check every reported number against an independent computation on the same batch."""
    from tunelab.lab.explain import prepare_step, run_explained_step, write_outputs

    setup = prepare_step(config, "test")
    try:
        trainer, model = setup.trainer, setup.model
        # The first batch train() draws: the length-bucketed sampler is deterministic per (seed, epoch).
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        counted = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        model.train()
        with torch.no_grad():
            expected = float(trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(counted)))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        explained = run_explained_step(setup, step=1)
        after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    finally:
        setup.close()

    assert torch.equal(trainer.record["batches"][0]["input_ids"], batch["input_ids"])
    assert explained.micro_batches == [tuple(batch["input_ids"].shape)]
    assert explained.counted_positions == counted
    # Forward: the reported loss is the Trainer's for this batch, and the per-example losses rebuild it.
    assert explained.loss == pytest.approx(expected, rel=2e-3)
    assert explained.loss == pytest.approx(logged["loss"], rel=1e-6)
    assert explained.loss_from_examples == pytest.approx(explained.loss, rel=2e-3)
    assert sum(e.counted for e in explained.examples) == counted and all(e.loss > 0 for e in explained.examples)
    # Backward: LoRA B has gradients in every layer; A none yet (B starts at zero); the frozen base none at all.
    layers = [g for g in explained.gradient_groups if g.name.startswith("layer ")]
    assert layers and all(g.lora_b > 0 and g.trainable > 0 for g in layers)
    assert all(g.lora_a == 0 for g in layers)
    assert sum(g.frozen for g in explained.gradient_groups) > 0
    assert sum(g.frozen_with_grad for g in explained.gradient_groups) == 0
    by_groups = math.sqrt(sum(g.lora_a ** 2 + g.lora_b ** 2 + g.full ** 2 for g in explained.gradient_groups))
    assert explained.grad_norm == pytest.approx(by_groups, rel=1e-4)
    assert explained.grad_norm == pytest.approx(logged["grad_norm"], rel=1e-4)
    # Optimizer: the reported change is the real difference of the weights before and after the step.
    deltas = [(after[n].float() - before[n].float()) for n in before]
    change = math.sqrt(sum(float(d.pow(2).sum()) for d in deltas))
    assert change > 0
    assert explained.change_norm == pytest.approx(change, rel=1e-4)
    assert explained.change_max == pytest.approx(max(float(d.abs().max()) for d in deltas), rel=1e-4)
    assert explained.optimizer == "AdamW" and explained.optimizer_state["optimizer step count"] == 1
    assert explained.optimizer_state["state keys"] == ["exp_avg", "exp_avg_sq"]
    # Scheduler: the curve covers the planned run and its step 1 is the learning rate the step used.
    assert len(explained.lr_curve) == explained.planned_steps
    assert explained.lr_curve[0] == pytest.approx(explained.learning_rate) and explained.learning_rate > 0
    assert explained.peak_rss["optimizer step"] >= explained.peak_rss["model"] > 0
    assert explained.seconds["forward (loss)"] > 0 and explained.seconds["backward (gradients)"] > 0

    files = write_outputs(explained, tmp_path / "explained")
    markdown = (tmp_path / "explained" / "explain.md").read_text(encoding="utf-8")
    assert f"the Trainer's loss for this step: {explained.loss:.6f}" in markdown
    assert "![Scheduler: the learning rate over the run](lr_schedule.png)" in markdown
    for name in ("lr_schedule.png", "gradient_norms.png"):
        assert (tmp_path / "explained" / name).read_bytes()[:4] == b"\x89PNG"
    assert len(files) == 3 and not list((tmp_path / "explained").glob(".*tmp*"))  # written atomically
    return explained


def test_explained_step_reports_the_trainers_own_numbers(tiny_llama, tmp_path):
    config = build_config(tiny_sft_raw(tiny_llama, tmp_path / "run", warmup_ratio=0.0))
    explained = _step_checked_against_the_trainer(config, tmp_path)
    assert explained.planned_steps == 3 and explained.step == 1
    assert not (tmp_path / "run").exists()  # explaining a step writes no run directory


@pytest.mark.e2e
def test_explained_step_on_packaged_smollm2(tmp_path):
    from tunelab.resources import resource_path

    config = build_config({
        "task": {"name": "sft"}, "model": {"name_or_path": "smollm2-135m-instruct"},
        "data": {"train_path": str(resource_path("qa_en_instructions.csv")), "max_rows": 16, "eval_fraction": 0.25},
        "lora": {"r": 4, "alpha": 8},
        "train": {"preset": "fast", "max_steps": 2, "batch_size": 2, "max_length": 64, "warmup_ratio": 0.0,
                  "estimate_steps": 0, "output_dir": str(tmp_path / "run")}})
    explained = _step_checked_against_the_trainer(config, tmp_path)
    assert len([g for g in explained.gradient_groups if g.name.startswith("layer ")]) == 30  # SmolLM2-135M's layers


def test_cli_explains_the_first_step_that_moves_the_weights(tiny_llama, tmp_path, cli):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_sft_raw(tiny_llama, tmp_path / "run")), encoding="utf-8")
    code, out, _ = cli("lab", "explain", config, "--output", tmp_path / "out")
    assert code == 0, out
    # The fast preset warms up from 0 over step 1: that step moves nothing, so step 2 is explained.
    assert "step 1 runs at learning rate 0" in out and "optimizer step 2 of 3 planned" in out
    markdown = (tmp_path / "out" / "explain.md").read_text(encoding="utf-8")
    assert "# Trainer explained: step 2" in markdown and "| layer 1 |" in markdown
    code, out, _ = cli("lab", "explain", config, "--output", tmp_path / "out")
    assert code == 2 and "--overwrite" in out  # an earlier explanation is replaced only on request


@pytest.mark.parametrize("override, message", [
    ("data.train_path={tmp}/missing.csv", "missing.csv"),
    ("model.name_or_path=smollm3", "smollm3"),
])
def test_explain_mistakes_are_one_line(tiny_llama, tmp_path, cli, override, message):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_sft_raw(tiny_llama, tmp_path / "run")), encoding="utf-8")
    code, out, _ = cli("lab", "explain", config, "--output", tmp_path / "out", "--set", override.format(tmp=tmp_path))
    assert code == 2
    assert message in out and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "out").exists()


def test_explain_without_a_config_file_is_one_line(tmp_path, cli):
    code, out, _ = cli("lab", "explain", tmp_path / "nope.yaml")
    assert code == 2 and "nope.yaml not found" in out and len(out.strip().splitlines()) == 1, out
