"""`tunelab export RUN --merged DIR` (plain transformers gives the run's logits) and `--gguf FILE` (llama.cpp's
format, read back by transformers' GGUF loader)."""
from __future__ import annotations

import json

import pytest
import torch

import tunelab
from conftest import tiny_sft_raw
from tunelab.config import build_config

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "2 + 2 ="]


def _logits(model, tokenizer, texts=PROMPTS) -> torch.Tensor:
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = model(**batch).logits.float()
    if logits.dim() == 3:  # causal LM: compare the real (unpadded) positions only
        return logits[batch["attention_mask"].bool()]
    return logits


@pytest.fixture(scope="module")
def lora_sft_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "run"
    return tunelab.train(build_config(tiny_sft_raw(tiny_llama, out, max_steps=3)), echo=lambda *_: None).run_dir


def test_merged_export_of_a_lora_run_gives_the_runs_logits_in_plain_transformers(lora_sft_run, tiny_llama, cli, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = tmp_path / "merged"
    code, output, _ = cli("export", lora_sft_run, "--merged", target)
    assert code == 0, output
    assert "AutoModelForCausalLM.from_pretrained" in output
    assert not (target / "adapter_config.json").exists() and (target / "config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(target)
    run = tunelab.load(lora_sft_run, dtype="float32")  # the export is fp32, whatever the run predicts in
    expected = _logits(run.model, run.tokenizer)
    assert torch.allclose(_logits(plain, tokenizer), expected, atol=1e-4, rtol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    assert not torch.allclose(_logits(base, tokenizer), expected, atol=1e-6, rtol=0)  # the adapter is in there
    assert "gives the run's logits" in (target / "README.md").read_text()
    # An existing export is replaced only with --overwrite; a folder it did not write never.
    code, output, _ = cli("export", lora_sft_run, "--merged", target)
    assert code == 2 and output.strip().splitlines() == [output.strip()] and "--overwrite" in output
    assert cli("export", lora_sft_run, "--merged", target, "--overwrite")[0] == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, output, _ = cli("export", lora_sft_run, "--merged", tmp_path / "mine", "--overwrite")
    assert code == 2 and "not a tunelab merged export" in output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_export_without_a_target_says_what_to_export(lora_sft_run, cli):
    code, output, _ = cli("export", lora_sft_run)
    assert code == 2 and "--merged" in output and len(output.strip().splitlines()) == 1


def _classify_run(model_dir, out, pooling: str):
    config = build_config({
        "task": {"name": "classify", "baseline": False, "calibrate": False},
        "model": {"name_or_path": str(model_dir), "pooling": pooling},
        "data": {"train_path": str(model_dir / "train.csv"), "eval_fraction": 0.0},
        "lora": {"r": 4, "alpha": 8},
        "train": {"preset": "fast", "max_steps": 2, "batch_size": 8, "max_length": 16, "learning_rate": 1e-2,
                  "output_dir": str(out), "estimate_steps": 0},
    })
    return tunelab.train(config, echo=lambda *_: None).run_dir


@pytest.mark.parametrize("pooling", ["native", "mean"])
def test_merged_classifier_matches_or_says_plainly_why_it_cannot(tiny_bert, tmp_path, cli, pooling):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = _classify_run(tiny_bert, tmp_path / "run", pooling)
    target = tmp_path / "merged"
    code, output, _ = cli("export", run_dir, "--merged", target)
    assert code == 0, output
    plain = AutoModelForSequenceClassification.from_pretrained(target, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(target)
    run = tunelab.load(run_dir)
    assert [plain.config.id2label[i] for i in range(len(run.task.classes))] == run.task.classes
    same = torch.allclose(_logits(plain, tokenizer), _logits(run.model, run.tokenizer), atol=1e-4, rtol=0)
    readme = (target / "README.md").read_text()
    recorded = json.loads((target / ".tunelab-merged").read_text())
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    if pooling == "native":
        assert same and warnings == [] and recorded["differences"] == []
    else:  # transformers cannot pool as the run does: said in the folder and on the terminal, never silent
        assert not same
        assert "POOLING" in readme and "MEAN" in readme and recorded["differences"][0].startswith("POOLING")
        assert len(warnings) == 1 and "mean pooling" in warnings[0], output


def _gguf_reload(path, with_tokenizer: bool = True):
    """The model (and tokenizer) transformers' GGUF loader reads from `path`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True)).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name) if with_tokenizer else None


def _chat_texts(tokenizer):
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in PROMPTS]


# f32 tensors round-trip exactly; f16/bf16 round each weight (relative error 2^-11 / 2^-8), so logits move a little.
GGUF_TOLERANCE = {"f32": 1e-4, "f16": 5e-3, "bf16": 5e-2}


def test_gguf_export_of_a_lora_run_reloads_in_transformers_with_the_merged_logits(lora_sft_run, cli, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = tmp_path / "merged"
    assert cli("export", lora_sft_run, "--merged", merged)[0] == 0
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    texts = _chat_texts(tokenizer)
    expected = _logits(reference, tokenizer, texts)
    for tensor_type, tolerance in GGUF_TOLERANCE.items():
        path = tmp_path / f"run-{tensor_type}.gguf"
        code, output, _ = cli("export", lora_sft_run, "--gguf", path, "--gguf-type", tensor_type)
        assert code == 0, output
        assert path.read_bytes()[:4] == b"GGUF"
        reloaded, gguf_tokenizer = _gguf_reload(path, with_tokenizer=tensor_type == "f32")  # the same metadata each time
        if gguf_tokenizer is not None:
            assert gguf_tokenizer.chat_template == tokenizer.chat_template
            assert gguf_tokenizer(texts, add_special_tokens=False)["input_ids"] == \
                tokenizer(texts, add_special_tokens=False)["input_ids"]
        difference = (_logits(reloaded, tokenizer, texts) - expected).abs().max().item()
        assert difference <= tolerance * max(1.0, expected.abs().max().item()), (tensor_type, difference)


def test_gguf_export_refuses_what_it_cannot_write(lora_sft_run, cli, tmp_path):
    code, output, _ = cli("export", lora_sft_run, "--gguf", tmp_path / "model.bin")
    assert code == 2 and "ending in .gguf" in output
    code, output, _ = cli("export", lora_sft_run, "--gguf", tmp_path / "m.gguf", "--gguf-type", "q4")
    assert code == 2 and "f16, bf16, f32" in output
    (tmp_path / "m.gguf").write_text("mine")
    code, output, _ = cli("export", lora_sft_run, "--gguf", tmp_path / "m.gguf")
    assert code == 2 and "--overwrite" in output and (tmp_path / "m.gguf").read_text() == "mine"


@pytest.mark.e2e
def test_gguf_export_of_the_packaged_smollm2_keeps_its_logits_on_real_prompts(tmp_path):
    """The real SmolLM2 (30 layers, grouped-query attention, tied embeddings) in f16, read back by transformers."""
    from tunelab.api import export_gguf, load_base

    path = export_gguf("smollm2-135m-instruct", tmp_path / "smollm2.gguf", tensor_type="f16")
    run = load_base("smollm2-135m-instruct", dtype="float32")  # bf16 on a fast-bf16 CPU otherwise
    reloaded, _ = _gguf_reload(path, with_tokenizer=False)
    texts = _chat_texts(run.tokenizer)
    expected, got = _logits(run.model, run.tokenizer, texts), _logits(reloaded, run.tokenizer, texts)
    # f16 weights: logits (|max| ~ 40) within 0.1; the greedy next token is the same at >= 99% of positions
    assert (got - expected).abs().max().item() < 0.1
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean().item() >= 0.99
