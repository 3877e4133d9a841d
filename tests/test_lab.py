"""`tunelab lab tokens` and `tunelab lab template`: special tokens, adding tokens, and the loss-mask view.

Tokenizer facts and the added-token folder use the packaged SmolLM2/MiniLM; training with new tokens runs on
the tiny random Llama (SmolLM2's real tokenizer) so it takes seconds.
"""
import html
import json
import re

import pandas as pd
import pytest
import torch

from tunelab.config import build_config
from tunelab.data.collate import IGNORE_INDEX
from tunelab.resources import resource_path

from conftest import tiny_sft_raw

QA = resource_path("qa_en_instructions.csv")
SMOLLM = "smollm2-135m-instruct"


# -- tokens ----------------------------------------------------------------------------------------------
def test_smollm_tokens_name_its_chat_control_tokens_and_the_sample_chat_tokenizes_back(smollm_tokenizer, tmp_path):
    from tunelab.lab.tokens import SAMPLE_CHAT, inspect_tokens

    data = tmp_path / "mixed.csv"
    pd.DataFrame({"question": ["계약이란 무엇인가요?", "What is a contract?"],
                  "answer": ["법이 집행하는 합의입니다.", "An agreement the law enforces."]}).to_csv(data, index=False)
    report = inspect_tokens(SMOLLM, data=data)
    assert dict(report.template_tokens) == {"<|im_start|>": 1, "<|im_end|>": 2}
    assert ("eos", "<|im_end|>", 2) in report.special
    assert ("<|im_end|>", 2, True) in report.added
    # The token table is the real tokenization of the rendered chat: ids and text both round-trip.
    rendered = smollm_tokenizer.apply_chat_template(SAMPLE_CHAT, tokenize=False)
    assert [p.id for p in report.sample] == smollm_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert "".join(p.text for p in report.sample) == rendered
    assert [p.special for p in report.sample].count(True) == rendered.count("<|im_start|>") + rendered.count("<|im_end|>")
    costs = {c.script: c for c in report.scripts}
    assert costs["Hangul"].characters == 20 and costs["Latin"].characters == 40
    # SmolLM2 is English-only: a Hangul letter costs several byte-level tokens, Latin letters share one.
    assert costs["Hangul"].tokens_per_character > 2 > 0.5 > costs["Latin"].tokens_per_character


def test_minilm_tokens_show_cls_sep_and_a_text_pair(cli):
    code, out, _ = cli("lab", "tokens", "all-minilm-l6-v2")
    assert code == 0, out
    assert re.search(r"cls\s*│\s*\[CLS\]\s*│\s*101", out) and re.search(r"sep\s*│\s*\[SEP\]\s*│\s*102", out)
    assert "no chat template" in out and "text pair" in out


@pytest.mark.parametrize("args, message", [
    (["lab", "tokens", "smollm3"], "model `smollm3` not found"),
    (["lab", "tokens", SMOLLM, "--add", "<|im_end|>", "--output", "{tmp}/out"], "token `<|im_end|>` is already in"),
    (["lab", "tokens", SMOLLM, "--add", " , ", "--output", "{tmp}/out"], "--add names no token"),
    (["lab", "tokens", SMOLLM, "--add", "<|law|>"], "--add needs --output"),
    (["lab", "tokens", SMOLLM, "--data", "{tmp}/missing.csv"], "missing.csv"),
])
def test_token_mistakes_are_one_line(cli, tmp_path, args, message):
    code, out, _ = cli(*[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    assert message in out and "Traceback" not in out and len(out.strip().splitlines()) == 1, out


def test_adding_tokens_to_smollm_saves_a_trainable_folder_with_single_ids_and_mean_rows(cli, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunelab.config import ModelConfig
    from tunelab.models import load_tokenizer
    from tunelab.models.registry import resolve_model

    out = tmp_path / "smollm-law"
    code, text, _ = cli("lab", "tokens", SMOLLM, "--add", "<|law|>,<|case|>", "--output", out)
    assert code == 0, text
    assert "49,152 -> 49,154 rows" in text
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(out)))  # as `tunelab train` loads model.name_or_path
    ids = [tokenizer("<|law|>", add_special_tokens=False)["input_ids"], tokenizer("<|case|>", add_special_tokens=False)["input_ids"]]
    assert ids == [[49152], [49153]]
    assert tokenizer.chat_template  # the chat template travels with the folder
    in_context = tokenizer("see <|law|> 12", add_special_tokens=False)["input_ids"]
    assert 49152 in in_context and tokenizer.decode(in_context) == "see <|law|> 12"
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(SMOLLM).path, dtype=torch.float32)
    rows, old = model.get_input_embeddings().weight, base.get_input_embeddings().weight
    assert rows.shape[0] == old.shape[0] + 2  # grew by exactly the number added
    assert torch.equal(rows[: old.shape[0]], old)
    assert torch.allclose(rows[49152], old.mean(dim=0)) and torch.allclose(rows[49153], old.mean(dim=0))
    manifest = json.loads((out / "tunelab_added_tokens.json").read_text())
    assert manifest["tokens"] == {"<|law|>": 49152, "<|case|>": 49153}
    # A second --add into the same folder needs --overwrite.
    code, text, _ = cli("lab", "tokens", SMOLLM, "--add", "<|court|>", "--output", out)
    assert code == 2 and "pass --overwrite" in text


def _law_data(path, rows=16):
    pd.DataFrame({"question": [f"Which section covers case {i}?" for i in range(rows)],
                  "answer": [f"<|law|> section {i} <|case|>" for i in range(rows)]}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def tiny_llama_with_law_tokens(tiny_llama, tmp_path_factory):
    from tunelab.lab.tokens import add_tokens

    out = tmp_path_factory.mktemp("tiny-law") / "model"
    added = add_tokens(str(tiny_llama), ["<|law|>", "<|case|>"], out)
    return out, list(added.tokens.values())


def _embedding_rows(folder, ids):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).get_input_embeddings().weight[ids].detach()


def test_new_token_rows_are_learned_by_a_full_fine_tune(tiny_llama_with_law_tokens, tmp_path):
    import tunelab

    model_dir, ids = tiny_llama_with_law_tokens
    raw = tiny_sft_raw(model_dir, tmp_path / "run", data=_law_data(tmp_path / "law.csv"))
    raw["lora"] = {"enabled": False}
    result = tunelab.train(build_config(raw))
    before, after = _embedding_rows(model_dir, ids), _embedding_rows(result.run_dir / "final", ids)
    assert not torch.allclose(before, after)


def test_new_token_rows_are_learned_with_lora(tiny_llama_with_law_tokens, tmp_path):
    import tunelab

    model_dir, ids = tiny_llama_with_law_tokens
    result = tunelab.train(build_config(tiny_sft_raw(model_dir, tmp_path / "run", data=_law_data(tmp_path / "law.csv"))))
    merged = tunelab.load(result.run_dir).model.get_input_embeddings().weight[ids].detach().float()
    assert not torch.allclose(_embedding_rows(model_dir, ids), merged)


# -- template and loss mask ------------------------------------------------------------------------------
def _qa_config(tmp_path, **train):
    config = tmp_path / "qa.yaml"
    config.write_text(
        "task: {name: sft, system_prompt: Answer briefly., category_system_prompts: {Grammarly: You check grammar.}}\n"
        f"model: {{name_or_path: {SMOLLM}}}\n"
        f"data: {{train_path: {QA}, max_rows: 30, eval_fraction: 0.2, stratify_by: null}}\n"
        f"train: {{max_length: {train.get('max_length', 256)}}}\n", encoding="utf-8")
    return config


def _decoded_runs(example, tokenizer):
    from tunelab.lab.template import trained_runs

    ids = [p.id for p in example.pieces]
    return [tokenizer.decode([ids[i] for i in run], clean_up_tokenization_spaces=False)
            for run in trained_runs(example)]


def test_template_view_highlights_exactly_the_tokens_with_labels(smollm_tokenizer, tmp_path, cli):
    from tunelab.cli.lab import TRAINED_STYLES, example_text
    from tunelab.config import load_config
    from tunelab.data.pipeline import load_splits
    from tunelab.lab.template import template_view
    from tunelab.tasks import get_task

    config = load_config(_qa_config(tmp_path))
    view = template_view(config, rows=3)
    # The same examples training builds: encode_train on the same split, same max_length.
    task = get_task("sft")(config)
    splits = load_splits(config, task, smollm_tokenizer)
    expected = task.encode_train(splits.train.iloc[:3], smollm_tokenizer, config.train.max_length)
    assert [[p.id for p in e.pieces] for e in view.examples] == [e["input_ids"] for e in expected]
    assert [e.labels for e in view.examples] == [e["labels"] for e in expected]
    for example in view.examples:
        runs = _decoded_runs(example, smollm_tokenizer)
        assert runs and runs[0].endswith("<|im_end|>")  # the answer and its end-of-turn are trained
        # terminal: the text under the trained styles is exactly the decoded trained tokens
        text = example_text(example)
        plain = text.plain
        highlighted = "".join(plain[s.start:s.end] for s in text.spans if str(s.style).split(" italic")[0] in TRAINED_STYLES)
        assert highlighted.replace("↵\n", "\n") == "".join(runs)
        assert example.trained_tokens == sum(label != IGNORE_INDEX for label in example.labels)

    html_file, json_file = tmp_path / "view.html", tmp_path / "processed.json"
    code, out, _ = cli("lab", "template", _qa_config(tmp_path), "--rows", "3", "--html", html_file, "--json", json_file)
    assert code == 0, out
    assert "trained" in out and "masked" in out
    page = html_file.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    sections = page.split("<h2>")[1:]
    assert len(sections) == 3
    for section, example in zip(sections, view.examples):
        spans = re.findall(r'<span class="tok (trained|masked)[^"]*" title="[^"]*" data-id="(\d+)">(.*?)</span>(?=<span class="tok|</div>)',
                           section, flags=re.S)
        assert [int(i) for _, i, _ in spans] == [p.id for p in example.pieces]
        trained_text = "".join(html.unescape(re.sub(r'<span class="nl">↵</span>', "", t)) for kind, _, t in spans
                               if kind == "trained")
        assert trained_text == "".join(_decoded_runs(example, smollm_tokenizer))
    saved = json.loads(json_file.read_text(encoding="utf-8"))
    assert saved["totals"]["trained_tokens"] == sum(e.trained_tokens for e in view.examples)
    for record in saved["examples"]:
        assert record["mask"] == [int(label != IGNORE_INDEX) for label in record["labels"]]
        assert record["text"] == smollm_tokenizer.decode(record["input_ids"], clean_up_tokenization_spaces=False)


def test_template_view_uses_the_category_system_prompt_and_shows_truncation(smollm_tokenizer, tmp_path):
    from tunelab.config import load_config
    from tunelab.lab.template import template_view

    view = template_view(load_config(_qa_config(tmp_path, max_length=64)), rows=30)
    frame = pd.read_csv(QA)
    texts = {e.row: "".join(p.text for p in e.pieces) for e in view.examples}
    categories = {row: frame.loc[row - 1, "category"] for row in texts}
    assert "Grammarly" in categories.values()
    for row, text in texts.items():
        system = "You check grammar." if categories[row] == "Grammarly" else "Answer briefly."
        assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>"), (row, text[:80])
    assert all(len(e.pieces) <= 64 for e in view.examples)
    truncated = [e for e in view.examples if e.truncated_tokens]
    assert truncated and view.totals()["truncated_examples"] == len(truncated)
    assert all(e.tokens_before_truncation > 64 for e in truncated)
    # A row whose whole answer was cut away trains nothing: training drops it and the view says so.
    for example in view.examples:
        assert example.trained_tokens > 0 or "dropped" in example.note


def test_template_view_of_a_classifier_shows_the_input_and_its_label(tmp_path, cli):
    data = tmp_path / "intents.csv"
    pd.DataFrame({"text": ["my card has not arrived", "how do I top up", "card still missing", "top up failed"] * 3,
                  "label": ["card_arrival", "top_up", "card_arrival", "top_up"] * 3}).to_csv(data, index=False)
    config = tmp_path / "classify.yaml"
    config.write_text(f"task: {{name: classify}}\nmodel: {{name_or_path: all-minilm-l6-v2}}\n"
                      f"data: {{train_path: {data}, eval_fraction: 0.25}}\ntrain: {{max_length: 32}}\n", encoding="utf-8")
    code, out, _ = cli("lab", "template", config, "--rows", "2", "--json", tmp_path / "p.json")
    assert code == 0, out
    assert "[CLS]" in out and "label: card_arrival" in out or "label: top_up" in out
    records = json.loads((tmp_path / "p.json").read_text())["examples"]
    assert len(records) == 2 and all(r["label"] in ("card_arrival", "top_up") and "mask" not in r for r in records)


def test_template_view_of_a_config_without_its_data_is_one_line(tmp_path, cli):
    config = tmp_path / "qa.yaml"
    config.write_text(f"task: sft\nmodel: {{name_or_path: {SMOLLM}}}\ndata: {{train_path: {tmp_path}/gone.csv}}\n")
    code, out, _ = cli("lab", "template", config)
    assert code == 2 and "gone.csv" in out and len(out.strip().splitlines()) == 1, out


def test_lab_lengths_is_data_lengths(tmp_path, cli):
    png = tmp_path / "lengths.png"
    code, out, _ = cli("lab", "lengths", _qa_config(tmp_path), "--png", png)
    assert code == 0, out
    assert '"suggested_max_length"' in out and png.stat().st_size > 0
