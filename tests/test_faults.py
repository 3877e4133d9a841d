"""Faults a run must survive: kill -9, Ctrl-C / SIGTERM, a crash while a checkpoint is written, a full disk,
--overwrite on folders tunelab did not make, resuming finished runs, outputs that already exist.

Every training here is a tiny random Llama (built from a config, SmolLM2's real tokenizer) on the shipped real
QA sample: a few seconds per run. The kill/signal tests start the real CLI in a child process.
"""
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import tunelab
from tunelab.config import build_config
from tunelab.errors import UserError
from tunelab.resources import resource_path

from conftest import tiny_sft_raw

QA = resource_path("qa_en_instructions.csv")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TUNELAB_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def raw_config(model_dir, out, **train) -> dict:
    return tiny_sft_raw(model_dir, out, dtype="float32", **{"max_steps": 4, "max_length": 96, "save_steps": 2, **train})


def config(model_dir, out, **train):
    return build_config(raw_config(model_dir, out, **train))


@pytest.fixture
def cli_inproc(cli):
    """The CLI in this process (conftest's `cli`): (exit code, output with line wrapping undone, click result)."""
    def invoke(*args, **kwargs):
        code, out, result = cli(*args, **kwargs)
        return code, unwrap(out), result
    return invoke


def write_yaml(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args, cwd=None, timeout=300):
    """The real CLI in a child process: (exit code, output with line wrapping undone)."""
    out = subprocess.run([sys.executable, "-m", "tunelab.cli.main", *map(str, args)], capture_output=True, text=True,
                         env=ENV, cwd=cwd, timeout=timeout)
    return out.returncode, unwrap(out.stdout + out.stderr)


def unwrap(text: str) -> str:
    return " ".join(text.split())


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def assert_no_duplicated_steps(run: Path):
    records = [r for r in history(run) if not r.get("after_training")]
    for kind in ("loss", "eval_loss", "train_loss"):
        steps = [r["step"] for r in records if kind in r]
        assert steps == sorted(set(steps)), (kind, steps)


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))


def tree_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def crash_at_step(monkeypatch, step: int, exc=KeyboardInterrupt):
    """Make the Trainer raise `exc` at the start of optimizer step `step` (1-based), once."""
    from tunelab.training.trainer import TunelabTrainer

    original = TunelabTrainer.training_step
    calls = {"n": 0}

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise exc("simulated interruption") if isinstance(exc, type) else exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TunelabTrainer, "training_step", crashing)
    return lambda: monkeypatch.setattr(TunelabTrainer, "training_step", original)


# -- kill -9, signals ------------------------------------------------------------------------------------
def test_kill_9_mid_training_then_resume_matches_an_uninterrupted_run(tiny_llama, tmp_path):
    """A real `tunelab train` process is SIGKILLed after its first checkpoint; `--resume` finishes it, the history
    has each step once, and the final eval loss equals an uninterrupted run's (same seed) within 1e-5."""
    steps = 30
    ref_cfg = write_yaml(tmp_path / "ref.yaml", raw_config(tiny_llama, tmp_path / "ref", max_steps=steps, eval_steps=2))
    cfg = write_yaml(tmp_path / "run.yaml", raw_config(tiny_llama, tmp_path / "run", max_steps=steps, eval_steps=2))
    code, out = cli("train", ref_cfg)
    assert code == 0, out
    reference = json.loads((tmp_path / "ref" / "metrics.json").read_text())

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "train", str(cfg)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "checkpoint-2").exists():
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    killed_at = max(checkpoint_steps(run))
    assert killed_at < steps and not (run / "final").exists(), "the kill came too late to test anything"

    code, out = cli("train", cfg, "--resume")
    assert code == 0, out
    assert "Traceback" not in out and "resuming" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_steps"] == steps
    assert_no_duplicated_steps(run)
    assert metrics["eval_loss"] == pytest.approx(reference["eval_loss"], rel=0, abs=1e-5)
    # train_loss covers the whole run (the Trainer alone reports only the resumed steps' mean)
    assert metrics["train_loss"] == pytest.approx(reference["train_loss"], rel=0, abs=1e-5)
    assert "eval_before_loss" in metrics


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_says_so_and_the_run_resumes(tiny_llama, tmp_path, sig):
    cfg = write_yaml(tmp_path / "run.yaml", raw_config(tiny_llama, tmp_path / "run", max_steps=200, save_steps=50,
                                                       eval_steps=50))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "train", str(cfg)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not [r for r in (history(run) if (run / "history.jsonl").exists() else []) if r.get("step", 0) >= 3]:
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    name = sig.name
    stopped = checkpoint_steps(run)
    assert len(stopped) == 1 and 3 <= stopped[0] < 50  # saved where it stopped, not at a save_steps multiple
    assert f"interrupted ({name}); checkpoint-{stopped[0]} is saved: continue with" in out and "--resume" in out
    assert not (run / "final").exists()

    code, out = cli("train", cfg, "--resume", "--max-steps", stopped[0] + 2)
    assert code == 0, out
    assert json.loads((run / "metrics.json").read_text())["train_steps"] == stopped[0] + 2
    assert_no_duplicated_steps(run)


def test_ctrl_c_before_the_first_checkpoint_does_not_advise_resume_and_the_run_restarts(
        tiny_llama, tmp_path, monkeypatch):
    run = tmp_path / "run"
    restore = crash_at_step(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt) as caught:
        tunelab.train(config(tiny_llama, run), echo=lambda s: None)
    message = str(caught.value)
    assert "before the first checkpoint" in message and "--resume" not in message
    assert not run.exists()  # nothing resumable, nothing left behind
    restore()
    result = tunelab.train(config(tiny_llama, run), echo=lambda s: None)  # the same command, no --overwrite
    assert result.metrics["train_steps"] == 4


def test_a_run_killed_before_its_first_checkpoint_restarts_without_overwrite(tiny_llama, tmp_path):
    """kill -9 leaves no chance to clean up: the marked folder with no checkpoint is simply started again."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".tunelab-run").write_text("{}")
    (run / "config.yaml").write_text("task: sft\n")
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # torn: no trainer_state.json
    (run / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"\0" * 10)
    lines = []
    result = tunelab.train(config(tiny_llama, run), echo=lines.append)
    assert result.metrics["train_steps"] == 4
    assert any("stopped before its first checkpoint" in line for line in lines)
    assert not list(run.glob(".tunelab-replaced-*"))


# -- torn checkpoints, full disk ---------------------------------------------------------------------------
def test_resume_skips_a_checkpoint_torn_while_saving(tiny_llama, tmp_path, monkeypatch):
    run = tmp_path / "run"
    restore = crash_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt) as caught:
        tunelab.train(config(tiny_llama, run), echo=lambda s: None)
    assert "checkpoint-2 is saved" in str(caught.value)
    restore()
    # A checkpoint torn by kill -9 while written by an older tunelab / by hand: weights, no trainer state ...
    torn = run / "checkpoints" / "checkpoint-4"
    torn.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (torn / name).write_bytes((run / "checkpoints" / "checkpoint-2" / name).read_bytes())
    (torn / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    # ... and one interrupted in the staging folder tunelab writes into first.
    (run / "checkpoints" / ".saving" / "checkpoint-3").mkdir(parents=True)
    lines = []
    result = tunelab.train(config(tiny_llama, run), resume=True, echo=lines.append)
    assert "resuming" in " ".join(lines) and any("from checkpoint-2" in line for line in lines), lines
    assert any("ignoring checkpoint-4" in line for line in lines)
    assert result.metrics["train_steps"] == 4
    assert_no_duplicated_steps(run)
    assert not (run / "checkpoints" / ".saving").exists()


def test_a_checkpoint_never_appears_half_written(tiny_llama, tmp_path, monkeypatch):
    """Die in the middle of saving checkpoint-4: checkpoint-4 does not exist, checkpoint-2 is intact."""
    from tunelab.training.trainer import TunelabTrainer

    original = TunelabTrainer._save_rng_state

    def die_while_saving(self, output_dir):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir)

    monkeypatch.setattr(TunelabTrainer, "_save_rng_state", die_while_saving)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tunelab.train(config(tiny_llama, run), echo=lambda s: None)
    assert checkpoint_steps(run) == [2]
    assert not (run / "checkpoints" / ".saving" / "checkpoint-4").exists()


def test_disk_full_while_saving_a_checkpoint_is_one_clear_error_and_keeps_the_last_good_one(
        tiny_llama, tmp_path, monkeypatch):
    from tunelab.training.trainer import TunelabTrainer

    original = TunelabTrainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if self.state.global_step == 4:
            Path(output_dir, "optimizer.pt").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir, "optimizer.pt")))
        return original(self, output_dir)

    monkeypatch.setattr(TunelabTrainer, "_save_optimizer_and_scheduler", full_disk)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"disk full while writing .*checkpoint-4; the last good checkpoint "
                                        r"\(checkpoint-2\) is kept"):
        tunelab.train(config(tiny_llama, run), echo=lambda s: None)
    assert checkpoint_steps(run) == [2] and not (run / "checkpoints" / ".saving").exists()
    monkeypatch.setattr(TunelabTrainer, "_save_optimizer_and_scheduler", original)
    assert tunelab.train(config(tiny_llama, run), resume=True, echo=lambda s: None).metrics["train_steps"] == 4


def test_resume_from_a_checkpoint_without_optimizer_state_warns(tiny_llama, tmp_path, monkeypatch):
    run = tmp_path / "run"
    restore = crash_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        tunelab.train(config(tiny_llama, run), echo=lambda s: None)
    restore()
    (run / "checkpoints" / "checkpoint-2" / "optimizer.pt").unlink()
    lines = []
    tunelab.train(config(tiny_llama, run), resume=True, echo=lines.append)
    assert any("no optimizer.pt" in line and "restart from scratch" in line for line in lines), lines


# -- resume semantics ---------------------------------------------------------------------------------------
def test_resume_on_a_finished_run_changes_nothing(tiny_llama, tmp_path, cli_inproc):
    run = tmp_path / "run"
    tunelab.train(config(tiny_llama, run), echo=lambda s: None)
    before = tree_hashes(run)
    cfg = write_yaml(tmp_path / "c.yaml", raw_config(tiny_llama, run))
    code, out, _ = cli_inproc("train", cfg, "--resume")
    assert code == 0, out
    assert "already finished" in out and "step 5" not in out
    assert tree_hashes(run) == before  # final/, metrics.json, history: untouched
    code, out, _ = cli_inproc("train", "--resume", "--output-dir", run)  # no config: the run's own
    assert code == 0 and "already finished" in out and "ignored" not in out, out


def test_resume_names_ignored_overrides_and_applies_a_longer_run(tiny_llama, tmp_path, cli_inproc):
    run = tmp_path / "run"
    tunelab.train(config(tiny_llama, run), echo=lambda s: None)
    code, out, _ = cli_inproc("train", "--resume", "--output-dir", run, "--max-steps", 6, "--lr", "0.5",
                              "--set", "lora.r=16")
    assert code == 0, out
    assert "train.max_steps = 6 (was 4)" in out
    assert "ignored" in out and "train.learning_rate" in out and "lora.r" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_steps"] == 6
    saved = tunelab.load_config(run / "config.yaml")
    assert saved.train.max_steps == 6 and saved.train.learning_rate == 1e-3 and saved.lora.r == 4
    assert_no_duplicated_steps(run)


def test_train_loss_after_a_resume_covers_the_whole_run(tiny_llama, tmp_path, monkeypatch):
    whole = tunelab.train(config(tiny_llama, tmp_path / "ref"), echo=lambda s: None).metrics["train_loss"]
    run = tmp_path / "run"
    restore = crash_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        tunelab.train(config(tiny_llama, run), echo=lambda s: None)
    restore()
    resumed = tunelab.train(config(tiny_llama, run), resume=True, echo=lambda s: None).metrics["train_loss"]
    assert resumed == pytest.approx(whole, abs=1e-5)
    summary = [r for r in history(run) if "train_loss" in r]
    assert len(summary) == 1 and summary[0]["train_loss"] == pytest.approx(whole, abs=1e-5)


def test_resume_without_output_dir_and_without_checkpoint_are_clear(tiny_llama, tmp_path, cli_inproc):
    cfg = write_yaml(tmp_path / "c.yaml", {**raw_config(tiny_llama, tmp_path / "x"), "train": {"preset": "fast"}})
    code, out, _ = cli_inproc("train", cfg, "--resume")
    assert code == 2 and "--resume needs the run to continue: pass --output-dir" in out, out


# -- --overwrite and the run folder ----------------------------------------------------------------------------
def test_overwrite_never_empties_a_folder_tunelab_did_not_make(tiny_llama, tmp_path, cli_inproc, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    write_yaml(project / "config.yaml", raw_config(tiny_llama, "."))  # a user folder that holds a config.yaml
    (project / "notes.txt").write_text("my notes")
    (project / "checkpoints").mkdir()
    (project / "checkpoints" / "mine.bin").write_bytes(b"precious")
    before = tree_hashes(project)
    monkeypatch.chdir(project)
    code, out, _ = cli_inproc("train", "config.yaml", "--output-dir", ".", "--overwrite")
    assert code == 2 and "Traceback" not in out, out
    assert "has no .tunelab-run marker" in out and "--overwrite only replaces folders tunelab created" in out
    assert tree_hashes(project) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_has_started(tiny_llama, tmp_path):
    run = tmp_path / "run"
    tunelab.train(config(tiny_llama, run), echo=lambda s: None)
    before = tree_hashes(run)
    bad = build_config({**raw_config(tiny_llama, run), "data": {"train_path": str(tmp_path / "missing.csv")}})
    with pytest.raises(UserError, match="missing.csv"):
        tunelab.train(bad, overwrite=True, echo=lambda s: None)
    assert tree_hashes(run) == before  # the replaced run came back whole
    result = tunelab.train(config(tiny_llama, run, max_steps=2), overwrite=True, echo=lambda s: None)
    assert result.metrics["train_steps"] == 2 and checkpoint_steps(run) == [2]
    assert not list(run.glob(".tunelab-replaced-*"))


def test_overwrite_refuses_a_run_folder_holding_user_files(tiny_llama, tmp_path):
    run = tmp_path / "run"
    tunelab.train(config(tiny_llama, run, max_steps=2), echo=lambda s: None)
    (run / "my_analysis.ipynb").write_text("{}")
    with pytest.raises(UserError, match=r"holds files tunelab did not write \(my_analysis.ipynb\)"):
        tunelab.train(config(tiny_llama, run, max_steps=2), overwrite=True, echo=lambda s: None)
    assert (run / "my_analysis.ipynb").exists() and (run / "final").exists()


def test_a_failed_run_leaves_no_folder_behind(tiny_llama, tmp_path):
    bad = build_config({**raw_config(tiny_llama, tmp_path / "run"), "data": {"train_path": str(tmp_path / "no.csv")}})
    with pytest.raises(UserError):
        tunelab.train(bad, echo=lambda s: None)
    assert not (tmp_path / "run").exists()
    empty = tmp_path / "mine"
    empty.mkdir()  # a folder the user made: kept, and left empty
    bad.train.output_dir = str(empty)
    with pytest.raises(UserError):
        tunelab.train(bad, echo=lambda s: None)
    assert empty.is_dir() and not any(empty.iterdir())


def test_output_dir_that_is_a_file_or_unwritable_is_a_clean_error(tiny_llama, tmp_path, cli_inproc):
    (tmp_path / "taken").write_text("a file")
    cfg = write_yaml(tmp_path / "c.yaml", raw_config(tiny_llama, tmp_path / "taken"))
    code, out, _ = cli_inproc("train", cfg)
    assert code == 2 and "is a file, not a folder" in out, out
    assert (tmp_path / "taken").read_text() == "a file"
    forbidden = Path("/sys/tunelab-run")  # sysfs: nobody may create folders there, root included
    code, out, _ = cli_inproc("train", cfg, "--output-dir", forbidden)
    assert code == 2 and "cannot prepare the run directory /sys/tunelab-run: not permitted" in out, out


def test_a_read_only_file_system_mid_run_is_a_clean_error(tiny_llama, tmp_path, cli_inproc, monkeypatch):
    import tunelab.training.callbacks as callbacks

    def read_only(target, record):
        raise OSError(errno.EROFS, "Read-only file system", str(target))

    monkeypatch.setattr(callbacks, "append_jsonl", read_only)
    cfg = write_yaml(tmp_path / "c.yaml", raw_config(tiny_llama, tmp_path / "run"))
    code, out, _ = cli_inproc("train", cfg)
    assert code == 2 and "Traceback" not in out, out
    assert f"cannot write {tmp_path / 'run' / 'history.jsonl'}: read-only file system" in out


def test_two_trainings_in_one_folder_are_refused(tiny_llama, tmp_path):
    from tunelab.training.rundir import RunDir

    run = tmp_path / "run"
    tunelab.train(config(tiny_llama, run, max_steps=2), echo=lambda s: None)
    code = ("import sys\nfrom tunelab.training.rundir import RunDir\n"
            "RunDir(__import__('pathlib').Path(sys.argv[1])).lock()\nprint('locked', flush=True)\n"
            "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="in use by another tunelab training process"):
            tunelab.train(config(tiny_llama, run, max_steps=2), resume=True, echo=lambda s: None)
        with pytest.raises(UserError, match="in use by another"):
            RunDir.prepare(run, resume=False, overwrite=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert (run / "final").exists()


# -- outputs of predict / ensemble / export ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    tunelab.train(config(tiny_llama, out, max_steps=1, save_steps=None), echo=lambda s: None)
    return out


def test_predict_refuses_to_replace_an_output_or_an_input(finished_run, tmp_path, cli_inproc):
    questions = tmp_path / "q.csv"
    pd.DataFrame({"question": ["Say hi.", "Name a color."]}).to_csv(questions, index=False)
    output = tmp_path / "answers.jsonl"
    output.write_text("keep me\n")
    code, out, _ = cli_inproc("predict", finished_run, "--data", questions, "--output", output)
    assert code == 2 and "exists; pass --overwrite" in out and output.read_text() == "keep me\n", out
    code, out, _ = cli_inproc("predict", finished_run, "--data", questions, "--output", questions, "--overwrite")
    assert code == 2 and "is also an input" in out, out
    code, out, _ = cli_inproc("predict", finished_run, "--data", questions, "--output",
                              finished_run / "metrics.json", "--overwrite")
    assert code == 2 and "is also an input" in out, out
    code, out, _ = cli_inproc("predict", finished_run, "--data", questions, "--output", output, "--overwrite")
    assert code == 0, out
    assert len(output.read_text().splitlines()) == 2


def test_ensemble_refuses_an_existing_output_before_any_work(finished_run, tmp_path, cli_inproc):
    output = tmp_path / "sub.csv"
    output.write_text("id,prediction\n")
    code, out, _ = cli_inproc("ensemble", finished_run, finished_run, "--data", QA, "--output", output)
    assert code == 2 and "exists; pass --overwrite" in out, out
    assert output.read_text() == "id,prediction\n"


def test_export_replaces_only_its_own_bundles(finished_run, tmp_path, cli_inproc, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "data.csv").write_text("a,b\n")
    code, out, _ = cli_inproc("export", finished_run, "--offline-bundle", folder)
    assert code == 2 and "exists; pass --overwrite" in out, out
    code, out, _ = cli_inproc("export", finished_run, "--offline-bundle", folder, "--overwrite")
    assert code == 2 and "not a tunelab bundle" in out, out
    assert (folder / "data.csv").read_text() == "a,b\n"
    bundle = tmp_path / "bundle"
    assert cli_inproc("export", finished_run, "--offline-bundle", bundle)[0] == 0
    assert (bundle / ".tunelab-bundle").exists()
    code, out, _ = cli_inproc("export", finished_run, "--offline-bundle", bundle)
    assert code == 2 and "--overwrite" in out
    code, out, _ = cli_inproc("export", finished_run, "--offline-bundle", bundle, "--overwrite")
    assert code == 0, out
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli_inproc("export", finished_run, "--offline-bundle", ".")
    assert code == 2 and "current directory" in out and "Traceback" not in out, out
    code, out, _ = cli_inproc("export", finished_run, "--offline-bundle", finished_run / "final" / "x")
    assert code == 2 and "overlaps the run" in out, out


# -- remote code ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["predict", "export", "chat", "generate", "test", "ensemble", "eval"])
def test_trust_remote_code_flag_reaches_the_loader(command, finished_run, tmp_path, cli_inproc, monkeypatch):
    """`--trust-remote-code` is passed to tunelab.load (with a warning); without it, load's default (False)."""
    import tunelab.api as api

    seen = []

    def fake_load(run_dir, device=None, trust_remote_code=False, **_):
        seen.append(trust_remote_code)
        raise UserError("stop here")

    monkeypatch.setattr(api, "load", fake_load)
    data = tmp_path / "q.csv"
    pd.DataFrame({"question": ["hi"], "answer": ["yo"]}).to_csv(data, index=False)
    args = {"predict": ["predict", finished_run, "--data", data, "--output", tmp_path / "o.jsonl"],
            "export": ["export", finished_run, "--offline-bundle", tmp_path / "b"],
            "chat": ["chat", finished_run],
            "generate": ["generate", finished_run, "--data", data, "--output", tmp_path / "o.jsonl"],
            "test": ["test", finished_run],
            "ensemble": ["ensemble", finished_run, finished_run, "--data", data, "--output", tmp_path / "o.csv"],
            "eval": ["eval", finished_run, "--data", data]}[command]
    for flag, expected in (([], False), (["--trust-remote-code"], True)):
        seen.clear()
        code, out, result = cli_inproc(*args, *flag)
        assert code == 2 and "Traceback" not in out and result.exception is None or isinstance(result.exception, SystemExit)
        assert seen and set(seen) == {expected}, (command, flag, seen)  # every loader got the flag
        if expected:
            assert "warning:" in out and "--trust-remote-code" in out


def test_a_killed_overwrite_puts_the_replaced_run_back(tiny_llama, tmp_path):
    """kill -9 after --overwrite moved the old run aside but before the new run wrote its config: the next
    command in that folder restores the old run whole (and --overwrite is needed again to replace it)."""
    run = tmp_path / "run"
    tunelab.train(config(tiny_llama, run, max_steps=2), echo=lambda s: None)
    before = tree_hashes(run)
    aside = run / ".tunelab-replaced-999-1"
    aside.mkdir()
    for entry in list(run.iterdir()):
        if entry != aside:
            entry.rename(aside / entry.name)
    (run / ".tunelab-run").write_text("{}")  # what the killed new run had written
    (run / "data_report.json").write_text("[]")
    lines = []
    with pytest.raises(UserError, match="already holds a run"):
        tunelab.train(config(tiny_llama, run, max_steps=2), echo=lines.append)
    assert any("put back the run that an interrupted --overwrite was replacing" in line for line in lines)
    assert tree_hashes(run) == before
