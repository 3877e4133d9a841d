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


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm_tokenizer):
    """A tiny random Llama (built from a config) with SmolLM2's real tokenizer: for mechanics tests that need
    seconds, not minutes. Real-model end-to-end tests use the packaged models."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(smollm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=smollm_tokenizer.pad_token_id,
        bos_token_id=smollm_tokenizer.bos_token_id, eos_token_id=smollm_tokenizer.eos_token_id))
    model.save_pretrained(folder)
    smollm_tokenizer.save_pretrained(folder)
    return folder


def tiny_sft_raw(model_dir, out, data=None, dtype="auto", **train) -> dict:
    """A raw SFT config for `tiny_llama` on the shipped real QA sample: 40 rows, a quarter held out, seconds a run."""
    from tunelab.resources import resource_path

    return {
        "task": {"name": "sft"},
        "model": {"name_or_path": str(model_dir), "dtype": dtype},
        "data": {"train_path": str(data or resource_path("qa_en_instructions.csv")), "max_rows": 40,
                 "eval_fraction": 0.25, "seed": 3},
        "lora": {"r": 4, "alpha": 8},
        "train": {"preset": "fast", "max_steps": 3, "batch_size": 4, "max_length": 128, "learning_rate": 1e-3,
                  "output_dir": str(out), "logging_steps": 1, "estimate_steps": 0, **train},
        "generation": {"max_new_tokens": 4, "batch_size": 8},
    }


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


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny random BERT with MiniLM's real tokenizer, and a small 3-label training file."""
    import pandas as pd
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunelab.models.registry import resolve_model

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-minilm-l6-v2").path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    words = {"sports": "match goal team score", "weather": "rain sun cloud wind", "food": "bread soup rice cake"}
    rows = [{"text": f"{w} {i}", "label": label} for label, ws in words.items() for i, w in enumerate(ws.split() * 3)]
    pd.DataFrame(rows).to_csv(folder / "train.csv", index=False)
    return folder
