"""The CLI's own surface: version/environment lines, and help that stays light."""
import os
import subprocess
import sys


def test_version_and_env_print_versions_and_hardware_one_per_line(cli):
    for args in (["--version"], ["env"]):
        code, out, _ = cli(*args)
        assert code == 0, out
        lines = out.splitlines()
        for name in ("tunelab", "torch", "transformers", "peft"):
            assert any(line.startswith(f"{name} ") for line in lines), (name, out)
        assert any(line.startswith("detected: ") and ("cpu" in line or "cuda" in line) for line in lines)
        assert any(line.startswith("cpu: ") and "flags:" in line for line in lines)


def test_help_does_not_import_torch_or_pandas():
    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from tunelab.cli.main import app\n"
            "result = CliRunner().invoke(app, ['--help'])\n"
            "assert result.exit_code == 0, result.output\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'numpy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _entry_point(*args: str) -> str:
    """Run the installed entry point (`main()`, as the `tunelab` script does) in a fresh interpreter; report which
    heavy modules it imported."""
    code = ("import sys\n"
            "from tunelab.cli.main import main\n"
            f"sys.argv = ['tunelab', *{list(args)!r}]\n"
            "try:\n"
            "    main()\n"
            "except SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "print('IMPORTED', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_file_only_commands_never_import_torch_or_transformers(tmp_path):
    """`--help`, `data stats` and `submission check` start without the ML stack (bench/bench_startup.py times it)."""
    from tunelab.resources import resource_path

    submission = tmp_path / "sub.csv"
    submission.write_text("id,winner_model_a,winner_model_b,winner_tie\n1,0.3,0.3,0.4\n", encoding="utf-8")
    for args in (["--help"], ["data", "stats", str(resource_path("qa_en_instructions.csv"))],
                 ["submission", "check", str(submission), "--format", "arena"]):
        assert _entry_point(*args).splitlines()[-1] == "IMPORTED []", args


def test_train_help_at_80_columns_shows_every_option_whole():
    out = _entry_point("train", "--help")
    assert "--dataset_path" in out and "--lr" in out and "--learning-rate" in out and "--batch-size" in out
    assert "…" not in out, out  # no option name cut short
    assert max(len(line) for line in out.splitlines()) <= 80


def test_readme_option_spellings_still_work(cli, monkeypatch):
    """README: `tunelab train --model smollm2 --dataset_path qa.csv --output_dir runs/x --epochs 1 --batch_size 4
    --lr 2e-4 --lora_r 8`: underscores, --lr and --dataset_path are accepted though --help shows one name each."""
    import tunelab.api as api

    seen = {}
    monkeypatch.setattr(api, "train", lambda cfg, **kwargs: seen.setdefault("cfg", cfg))
    code, out, _ = cli("train", "--model", "smollm2", "--dataset_path", "qa.csv", "--output_dir", "runs/x",
                       "--epochs", "1", "--batch_size", "4", "--lr", "2e-4", "--lora_r", "8")
    assert code == 0, out
    cfg = seen["cfg"]
    assert (cfg.data.train_path, cfg.train.output_dir, cfg.train.epochs, cfg.train.batch_size,
            cfg.train.learning_rate, cfg.lora.r) == ("qa.csv", "runs/x", 1, 4, 2e-4, 8)
    code, out, _ = cli("train", "--learning-rate", "1e-4", "--lr", "2e-4")
    assert code == 2 and out.strip().startswith("error:") and len(out.strip().splitlines()) == 1, out


def test_common_command_names_suggest_ours(cli):
    for typed, meant in (("interactive", "chat"), ("finetune", "train"), ("chta", "chat")):
        code, out, _ = cli(typed)
        assert code == 2 and f"Did you mean '{meant}'?" in out, out


def test_submission_messages_read_naturally(cli, tmp_path):
    bad = tmp_path / "sub.csv"
    bad.write_text("id,a\n1,0.5\n", encoding="utf-8")
    code, out, _ = cli("submission", "check", bad, "--format", "arena")
    assert code == 2 and "the arena submission format has" in " ".join(out.split()) and "a arena" not in out, out
