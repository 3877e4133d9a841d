"""`tunelab sweep`: a hyper-parameter search where each trial is a normal run directory.

End to end on a tiny random Llama (built from a config, SmolLM2's real tokenizer) and the shipped QA sample,
2 trials of 2 steps; the Optuna bookkeeping (pruning, resume, best config) on a stand-in `train` that takes
no time; user mistakes through the CLI: one clear line, exit 2.
"""
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

import tunelab
from tunelab.config import build_config
from tunelab.errors import UserError
from tunelab.resources import resource_path
from tunelab.sweeps import parse_params, sweep

from conftest import tiny_sft_raw

QA = resource_path("qa_en_instructions.csv")


def _raw(model_dir, out, **train):
    return tiny_sft_raw(model_dir, out, **{"max_steps": 2, **train})


def test_two_tiny_trials_end_to_end(tiny_llama, tmp_path):
    lines = []
    result = sweep(build_config(_raw(tiny_llama, tmp_path / "unused")), trials=2,
                   params=["learning_rate=1e-4:1e-2", "lora_r=2:8"], output_dir=tmp_path / "sweep", echo=lines.append)
    sweep_dir = tmp_path / "sweep"
    assert result.sweep_dir == sweep_dir and result.metric == "eval_loss" and not result.greater_is_better
    for n in (0, 1):  # each trial is a normal, loadable run directory
        run = sweep_dir / f"trial-{n:03d}"
        assert (run / "metrics.json").exists() and (run / "config.yaml").exists() and (run / "final").is_dir()
        assert "split:" in (run / "train.log").read_text()
    trials = pd.read_csv(sweep_dir / "trials.csv")
    assert len(trials) == 2 and list(trials["state"]) == ["complete", "complete"]
    assert {"trial", "eval_loss", "learning_rate", "lora_r", "duration_s"} <= set(trials.columns)
    best = trials.loc[trials["eval_loss"].idxmin()]
    assert result.best_trial == best["trial"] and result.best_value == pytest.approx(best["eval_loss"])
    # The trial's own run saved the sampled values, and its metrics are the objective.
    trial_cfg = tunelab.load_config(sweep_dir / f"trial-{int(best['trial']):03d}" / "config.yaml")
    assert trial_cfg.train.learning_rate == pytest.approx(best["learning_rate"])
    # best_config.yaml: the full resolved config with the best values, ready for `tunelab train`.
    best_cfg = tunelab.load_config(sweep_dir / "best_config.yaml")
    assert best_cfg.train.learning_rate == pytest.approx(best["learning_rate"])
    assert best_cfg.lora.r == best["lora_r"] and best_cfg.train.max_steps == 2 and best_cfg.train.output_dir is None
    assert best_cfg.model.name_or_path == str(tiny_llama)
    assert (sweep_dir / "plots" / "trials.png").stat().st_size > 1000
    trial_lines = [line for line in lines if line.startswith("trial-")]
    assert len(trial_lines) == 2 and "eval_loss" in trial_lines[0]  # one line per trial, no training chatter
    assert not any(line.startswith("step ") for line in lines)
    # The finished sweep is not silently reused.
    with pytest.raises(UserError, match="already holds a sweep.*--resume"):
        sweep(build_config(_raw(tiny_llama, tmp_path / "unused")), trials=2, output_dir=sweep_dir, echo=lines.append)


@pytest.fixture
def fake_train(monkeypatch):
    """A stand-in for api.train with the `extra_callbacks` hook: reports eval_loss at steps 10 and 20 and
    returns it; `losses` lists each call's value (default 1.0)."""
    from tunelab import api
    from tunelab.training.recipe import RunResult

    calls = []

    def train(config, resume=False, overwrite=False, echo=print, extra_callbacks=()):
        loss = fake.losses[len(calls)] if len(calls) < len(fake.losses) else 1.0
        if isinstance(loss, BaseException):
            calls.append(config)
            raise loss
        calls.append(config)
        run_dir = Path(config.train.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        echo("fake training")
        for step in (10, 20):
            for cb in extra_callbacks:
                cb.on_evaluate(None, SimpleNamespace(global_step=step), None, metrics={"eval_loss": loss})
        return RunResult(run_dir, {"eval_before_loss": 9.0, "eval_loss": loss})

    fake = SimpleNamespace(calls=calls, losses=[])
    monkeypatch.setattr(api, "train", train)
    return fake


def test_weak_trials_are_pruned_and_a_sweep_resumes(fake_train, tmp_path):
    fake_train.losses = [1.0, 1.2, 5.0, 0.5]
    config = build_config({"task": "sft", "data": {"train_path": str(QA)}, "train": {"output_dir": str(tmp_path / "s")}})
    lines = []
    result = sweep(config, trials=4, params={"learning_rate": (1e-5, 1e-3), "warmup_ratio": None}, echo=lines.append)
    assert result.sweep_dir == tmp_path / "s"  # train.output_dir names the sweep dir
    assert list(result.trials["state"]) == ["complete", "complete", "pruned", "complete"]
    assert "pruned at step 10" in result.trials["note"][2]
    assert result.best_trial == 3 and result.best_value == 0.5
    best_cfg = tunelab.load_config(tmp_path / "s" / "best_config.yaml")
    assert best_cfg.train.learning_rate == pytest.approx(result.trials["learning_rate"][3])
    assert [c.train.output_dir for c in fake_train.calls] == [str(tmp_path / "s" / f"trial-{n:03d}") for n in range(4)]
    assert any("pruned" in line for line in lines if line.startswith("trial-002"))
    # epochs would change nothing under max_steps: dropped from the default space, refused when asked for.
    capped = build_config({"task": "sft", "train": {"max_steps": 5}})
    with pytest.raises(UserError, match="--param epochs: train.max_steps is set"):
        sweep(capped, trials=1, params=["epochs=1:3"], output_dir=tmp_path / "capped")

    resumed = sweep(config, trials=6, resume=True, echo=lines.append)
    assert len(resumed.trials) == 6 and len(fake_train.calls) == 6
    assert set(resumed.params) == {"learning_rate", "warmup_ratio"}  # the stored search space
    assert len(pd.read_csv(tmp_path / "s" / "trials.csv")) == 6


def test_search_space_parsing_and_bad_ranges(tmp_path):
    assert set(parse_params(None)) == {"learning_rate", "epochs", "lora_r", "warmup_ratio"}
    space = parse_params(["lr=1e-5:1e-3", "lora.r", "epochs=1:2.5"])
    assert space == {"learning_rate": (1e-5, 1e-3), "lora_r": (4, 64), "epochs": (1.0, 2.5)}
    with pytest.raises(UserError, match=r"--param learning_rate: low \(0.001\) is above high \(1e-05\)"):
        parse_params(["learning_rate=1e-3:1e-5"])
    with pytest.raises(UserError, match="log scale, so its range must be above 0"):
        parse_params(["learning_rate=0:1e-3"])
    with pytest.raises(UserError, match="lora_r takes whole numbers"):
        parse_params(["lora_r=2.5:8"])
    with pytest.raises(UserError, match="expected LOW:HIGH.*--set train.epochs=3"):
        parse_params(["epochs=3"])
    # A range the config itself rejects fails before any training, naming the parameter.
    with pytest.raises(UserError, match="--param warmup_ratio.*warmup_ratio"):
        sweep(build_config({"task": "sft"}), trials=1, params=["warmup_ratio=0.1:1.5"],
              output_dir=tmp_path / "sw")
    assert not (tmp_path / "sw").exists()


def _config_file(tmp_path, sweep_section=None):
    raw = {"task": "sft", "data": {"train_path": str(QA)}, "train": {"output_dir": str(tmp_path / "sw")}}
    if sweep_section:
        raw["sweep"] = sweep_section
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_unknown_parameter_is_one_clear_line(cli, tmp_path):
    code, out, _ = cli("sweep", _config_file(tmp_path), "--trials", 2, "--param", "lerning_rate=1e-5:1e-3")
    assert code == 2, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1
    assert "unknown sweep parameter `lerning_rate`" in out and "did you mean `learning_rate`" in out
    assert not (tmp_path / "sw").exists()


def test_cli_bad_range_and_bad_sweep_section(cli, tmp_path):
    code, out, _ = cli("sweep", _config_file(tmp_path), "--param", "lora_r=32:8")
    assert code == 2 and "Traceback" not in out and "low (32) is above high (8)" in out, out
    code, out, _ = cli("sweep", _config_file(tmp_path, {"params": {"learning_rate": [1e-3, 1e-5]}}))
    assert code == 2 and "sweep.params learning_rate: low" in out, out
    code, out, _ = cli("sweep", _config_file(tmp_path, {"trails": 3}))
    assert code == 2 and "unknown key `sweep.trails` (did you mean `trials`?)" in out, out


def test_a_sweep_whose_first_trial_fails_leaves_nothing_behind(fake_train, tmp_path):
    """Like a training run, a sweep that stops before any trial finished removes what it wrote, so the same
    command starts again once the problem is fixed; a failure after that keeps the results so far."""
    config = build_config({"task": "sft", "data": {"train_path": str(QA)}})
    fake_train.losses = [UserError("data.csv: missing column `question`")]
    with pytest.raises(UserError, match="missing column"):
        sweep(config, trials=2, output_dir=tmp_path / "sw", echo=lambda *_: None)
    assert not (tmp_path / "sw").exists()
    fake_train.calls.clear()
    fake_train.losses = [1.0, RuntimeError("boom")]
    with pytest.raises(RuntimeError, match="boom"):
        sweep(config, trials=3, output_dir=tmp_path / "sw", echo=lambda *_: None)
    trials = pd.read_csv(tmp_path / "sw" / "trials.csv")
    assert list(trials["state"]) == ["complete", "fail"] and "RuntimeError: boom" in trials["note"][1]
    assert (tmp_path / "sw" / "best_config.yaml").exists()
    # Ctrl-C: the results so far stay, and the message says how to go on.
    fake_train.calls.clear()
    fake_train.losses = [1.0, KeyboardInterrupt()]
    with pytest.raises(KeyboardInterrupt, match="--resume --output-dir"):
        sweep(config, trials=3, output_dir=tmp_path / "ki", echo=lambda *_: None)
    assert list(pd.read_csv(tmp_path / "ki" / "trials.csv")["note"].fillna("")) == ["", "interrupted"]
    resumed = sweep(config, trials=3, output_dir=tmp_path / "ki", resume=True, echo=lambda *_: None)
    assert list(resumed.trials["state"]) == ["complete", "fail", "complete", "complete"]
