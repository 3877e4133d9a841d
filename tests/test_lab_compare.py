"""`tunelab lab compare`: the same prompts through several models, answers side by side, and how likely each
model finds a reference answer. Real generation on the packaged SmolLM2 (2 prompts, few tokens); the
fine-tuned-vs-base likelihood check trains the tiny random Llama for seconds."""
import math

import pandas as pd
import pytest

from tunelab.config import build_config

from conftest import tiny_sft_raw

SMOLLM = "smollm2-135m-instruct"


@pytest.fixture
def two_prompts(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": ["What is the capital of France?", "Name a primary colour."],
                  "reference": ["The capital of France is Paris.", "Red is a primary colour."]}).to_csv(path, index=False)
    return path


def test_compare_on_smollm_writes_one_answer_per_model_and_prompt(cli, tmp_path, two_prompts):
    out = tmp_path / "compare.csv"
    code, text, _ = cli("lab", "compare", "--models", SMOLLM, "--prompts", two_prompts, "--max-new-tokens", "8",
                        "--output", out)
    assert code == 0, text
    assert f"{SMOLLM} was prompted with: chat template" in text  # says how the model was prompted
    frame = pd.read_csv(out)
    assert frame["prompt"].tolist() == ["What is the capital of France?", "Name a primary colour."]
    assert list(frame.columns) == ["prompt", "reference", SMOLLM, f"{SMOLLM} tokens", f"{SMOLLM} tokens/s",
                                   f"{SMOLLM} reference loglik"]
    assert frame[SMOLLM].map(lambda a: isinstance(a, str) and a.strip() != "").all()
    assert frame[f"{SMOLLM} tokens"].between(1, 8).all() and (frame[f"{SMOLLM} tokens/s"] > 0).all()
    logliks = frame[f"{SMOLLM} reference loglik"]
    assert all(-20 < v < 0 for v in logliks)
    assert "Paris" in frame.loc[0, SMOLLM]  # greedy SmolLM2-Instruct knows this one


def test_seeded_sampling_repeats_and_a_model_without_chat_template_gets_the_raw_prompt(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    from tunelab.lab.compare import compare_models, read_prompts

    raw = tmp_path / "no-template"
    import shutil

    shutil.copytree(tiny_llama, raw)
    tokenizer = AutoTokenizer.from_pretrained(raw)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(raw)
    (raw / "chat_template.jinja").unlink(missing_ok=True)
    rows, column, reference = read_prompts(prompt="Once upon a time")
    first = compare_models([str(tiny_llama), str(raw)], rows, column, reference, max_new_tokens=6, sample=True, seed=7)
    again = compare_models([str(tiny_llama), str(raw)], rows, column, reference, max_new_tokens=6, sample=True, seed=7)
    assert [m.answers for m in first.models] == [m.answers for m in again.models]
    assert first.models[0].prompting.startswith("chat template")
    assert first.models[1].prompting.startswith("raw prompt")
    assert [m.name for m in first.models] == [tiny_llama.name, "no-template"]


def test_a_fine_tuned_run_finds_its_training_answers_more_likely_than_its_base(tiny_llama, tmp_path, cli):
    import tunelab

    data = tmp_path / "law.csv"
    pd.DataFrame({"question": [f"Which section covers case {i}?" for i in range(16)],
                  "answer": [f"Section {i} of the civil code covers it." for i in range(16)]}).to_csv(data, index=False)
    run = tunelab.train(build_config(tiny_sft_raw(tiny_llama, tmp_path / "run", data=data, max_steps=12,
                                                  learning_rate=5e-3))).run_dir
    prompts = tmp_path / "prompts.csv"
    pd.read_csv(data).head(6).to_csv(prompts, index=False)  # question/answer columns: the run's own format
    code, text, _ = cli("lab", "compare", "--models", f"{tiny_llama},{run}", "--prompts", prompts,
                        "--max-new-tokens", "3", "--output", tmp_path / "c.csv")
    assert code == 0, text
    assert "run was prompted with: the run's own prompt (task sft, conversational, chat template)" in text
    frame = pd.read_csv(tmp_path / "c.csv")
    base, tuned = frame[f"{tiny_llama.name} reference loglik"], frame["run reference loglik"]
    assert not any(math.isnan(v) for v in list(base) + list(tuned))
    print("mean reference loglik: base", base.mean(), "tuned", tuned.mean())
    assert tuned.mean() > base.mean() + 0.1 and (tuned > base).all(), (base.mean(), tuned.mean())


@pytest.mark.parametrize("args, message", [
    (["--models", "smollm3", "--prompt", "hi"], "model `smollm3` not found"),
    (["--models", "all-minilm-l6-v2", "--prompt", "hi"], "cannot serve as a decoder"),
    (["--models", SMOLLM], "--prompts FILE or --prompt TEXT"),
    (["--models", SMOLLM, "--prompts", "{tmp}/p.csv"], "no prompt column"),
    (["--models", " , ", "--prompt", "hi"], "--models names no model"),
])
def test_compare_mistakes_are_one_line(cli, tmp_path, args, message):
    pd.DataFrame({"input": ["hi"]}).to_csv(tmp_path / "p.csv", index=False)
    code, out, _ = cli("lab", "compare", *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    assert message in out and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
