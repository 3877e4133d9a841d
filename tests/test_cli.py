"""The CLI's own surface: version/environment lines, and help that stays light."""
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
