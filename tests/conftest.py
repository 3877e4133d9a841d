import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TUNELAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (set TUNELAB_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm_tokenizer():
    from tunelab.config import ModelConfig
    from tunelab.models import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="smollm2-135m-instruct"))


@pytest.fixture
def cli():
    """Run the CLI in-process; returns (exit_code, output)."""
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    runner = CliRunner()

    def invoke(*args, input=None):
        result = runner.invoke(app, [str(a) for a in args], input=input)
        return result.exit_code, result.output, result
    return invoke
