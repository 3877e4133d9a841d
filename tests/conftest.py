import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

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


def pytest_collection_modifyitems(config, items):
    # A test that needs ../shared/data is an end-to-end test, whatever its author marked.
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI=true) the shared data and packaged models are always there: a skipped e2e test is a failure."""
    outcome = yield
    report = outcome.get_result()
    # An xfail (a known, reported product gap; -rx lists it with its reason) is not a skip.
    if (report.skipped and not hasattr(report, "wasxfail") and os.environ.get("CI") == "true"
            and item.get_closest_marker("e2e")):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"end-to-end test skipped in CI, which always has ../shared/data: {reason}"
