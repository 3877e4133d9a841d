"""Generation speed levers keep outputs: prefill by length bucket, bf16 prediction on fast-bf16 CPUs only."""
from __future__ import annotations

import pytest
import torch

from tunelab.config.schema import GenerationConfig, ModelConfig
from tunelab.inference.engine import GenerationEngine, _length_groups, prefill_by_length
from tunelab.models.hardware import Hardware, cpu_has_fast_bf16
from tunelab.models.loading import predict_dtype


def test_length_groups_cover_every_row_once_with_little_padding():
    lengths = [300, 40, 290, 41, 120, 35, 118, 39, 7, 300]
    groups = _length_groups(lengths, slack=1.15)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        real = sum(lengths[i] for i in g)
        assert max(lengths[i] for i in g) * len(g) <= 1.15 * real
    padded = sum(max(lengths[i] for i in g) * len(g) for g in groups)
    assert padded < 0.5 * max(lengths) * len(lengths)  # one left-padded batch would pay 3,000 positions


def _prompts(tokenizer):
    words = "the quick brown fox jumps over the lazy dog and keeps on running through the field".split()
    return [" ".join(words[: n]) for n in (2, 3, 16, 5, 15, 4, 9)]


def _engine(model, tokenizer, **kw):
    return GenerationEngine(model, tokenizer, GenerationConfig(max_new_tokens=6, do_sample=False,
                                                               repetition_penalty=1.0, batch_size=8, **kw))


def test_bucketed_prefill_generates_what_one_padded_batch_generates(tiny_llama, smollm_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    prompts = _prompts(smollm_tokenizer)
    engine = _engine(model, smollm_tokenizer)
    enc = smollm_tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    cache = prefill_by_length(model, enc["input_ids"], enc["attention_mask"])
    assert cache is not None and cache.get_seq_length() == enc["input_ids"].shape[1] - 1

    engine.bucketed_prefill = False
    plain = engine.generate(prompts)
    engine.bucketed_prefill = True
    bucketed = engine.generate(prompts)
    assert bucketed == plain and all(bucketed)
    static = prefill_by_length(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=6)
    assert type(static).__name__ == "StaticCache" and static.layers[0].keys.shape[2] == enc["input_ids"].shape[1] - 1 + 6
    assert int(static.get_seq_length()) == enc["input_ids"].shape[1] - 1
    # The cached keys equal the one-batch prefill's at every real position.
    with torch.inference_mode():
        ids, mask = enc["input_ids"][:, :-1], enc["attention_mask"][:, :-1]
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    for layer, ref in zip(cache.layers, out.past_key_values.layers):
        real = mask.bool()[:, None, :, None].expand_as(ref.keys)
        torch.testing.assert_close(layer.keys[real], ref.keys[real], atol=1e-5, rtol=1e-4)
        assert layer.keys[~real].abs().max() == 0  # pad slots hold zeros (and are masked)


def test_server_batches_prefill_by_length_with_the_same_tokens(tiny_llama, smollm_tokenizer):
    """`generate_batch_ids` (the server's request batching) prefills by length too: the same new tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids = [smollm_tokenizer(p, add_special_tokens=False)["input_ids"] for p in _prompts(smollm_tokenizer)]
    engine = _engine(model, smollm_tokenizer)
    engine.bucketed_prefill = False
    plain = engine.generate_batch_ids(ids, max_new_tokens=6)
    engine.bucketed_prefill = True
    bucketed = engine.generate_batch_ids(ids, max_new_tokens=6)
    assert plain.shape == bucketed.shape and plain.shape[1] >= 1
    assert torch.equal(plain, bucketed)


def _tunelab_sdpa_tiny(path):
    from transformers import AutoModelForCausalLM

    from tunelab.models.attention import register

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.set_attn_implementation(register())
    return model


@pytest.mark.parametrize("budget", [4096, 20])
def test_packed_prefill_caches_what_one_padded_batch_caches(tiny_llama, smollm_tokenizer, monkeypatch, budget):
    """Models on `tunelab_sdpa` prefill the prompts packed end to end (in several forwards under a small token
    budget): the cache holds the one-batch prefill's keys and values at every real position, zeros elsewhere, and
    generation gives the same tokens."""
    import tunelab.inference.engine as engine_module

    monkeypatch.setattr(engine_module, "PREFILL_TOKENS", budget)
    model = _tunelab_sdpa_tiny(tiny_llama)
    prompts = _prompts(smollm_tokenizer)
    enc = smollm_tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    forwards = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    cache = prefill_by_length(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=6)
    hook.remove()
    real_tokens = int(enc["attention_mask"].sum()) - len(prompts)
    assert all(shape[0] == 1 for shape in forwards) and sum(shape[1] for shape in forwards) == real_tokens
    assert len(forwards) == 1 if budget == 4096 else (len(forwards) == 3 and max(s[1] for s in forwards) <= budget)
    width = enc["input_ids"].shape[1]
    with torch.inference_mode():
        ids, mask = enc["input_ids"][:, :-1], enc["attention_mask"][:, :-1]
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    for layer, ref in zip(cache.layers, out.past_key_values.layers):
        for mine, theirs in ((layer.keys, ref.keys), (layer.values, ref.values)):
            mine = mine[:, :, : width - 1]
            real = mask.bool()[:, None, :, None].expand_as(theirs)
            torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-4)
            assert mine[~real].abs().max() == 0
    engine = _engine(model, smollm_tokenizer)
    engine.bucketed_prefill = False
    plain = engine.generate(prompts)
    engine.bucketed_prefill = True
    assert engine.generate(prompts) == plain and all(plain)


def test_packed_prefill_falls_back_to_groups_when_a_layer_attends_across_prompts(tiny_llama, smollm_tokenizer,
                                                                                  monkeypatch):
    """A model whose layers never see `cu_seq_lens_q` would attend from one prompt into the one before it: the
    segment count gives it away, and the prompts are prefilled by length groups instead (same cache)."""
    import tunelab.models.attention as attention

    model = _tunelab_sdpa_tiny(tiny_llama)
    enc = smollm_tokenizer(_prompts(smollm_tokenizer), return_tensors="pt", padding=True, padding_side="left",
                           add_special_tokens=False)
    packed = prefill_by_length(model, enc["input_ids"], enc["attention_mask"])
    monkeypatch.setattr(attention, "_segments_apply", lambda query, key, kwargs: False)
    forwards = []
    model.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(kwargs["input_ids"].shape),
                                    with_kwargs=True)
    grouped = prefill_by_length(model, enc["input_ids"], enc["attention_mask"])
    assert forwards[0][0] == 1 and any(shape[0] > 1 for shape in forwards[1:])  # the packed try, then the groups
    for a, b in zip(packed.layers, grouped.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-4)


def test_bucketed_prefill_falls_back_for_sliding_window_caches(smollm_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(
        vocab_size=len(smollm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, sliding_window=4, pad_token_id=smollm_tokenizer.pad_token_id)).eval()
    enc = smollm_tokenizer(_prompts(smollm_tokenizer), return_tensors="pt", padding=True, padding_side="left",
                           add_special_tokens=False)
    assert prefill_by_length(model, enc["input_ids"], enc["attention_mask"]) is None
    assert all(_engine(model, smollm_tokenizer).generate(_prompts(smollm_tokenizer)))


@pytest.mark.e2e
def test_bucketed_prefill_on_real_smollm2_keeps_greedy_outputs():
    from tunelab.models import detect_hardware, load_model, load_tokenizer

    cfg = ModelConfig(name_or_path="smollm2-135m-instruct", dtype="float32")
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, "causal_lm", detect_hardware(cfg), tokenizer=tokenizer, for_training=False)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("Hi", "Name three colours of the rainbow, please, and say why the sky looks blue in daytime.",
                         "What is 2+2?", "Write one sentence about the sea.")]
    engine = _engine(model, tokenizer)
    engine.bucketed_prefill = False
    plain = engine.generate(prompts)
    engine.bucketed_prefill = True
    assert engine.generate(prompts) == plain
    # Decode steps attend only over the slots their rows attend (`decode_attention`); transformers' own SDPA reads
    # the whole padded cache. Same greedy replies in fp32.
    longer = GenerationConfig(max_new_tokens=24, do_sample=False, repetition_penalty=1.0, batch_size=8)
    assert model.config._attn_implementation == "tunelab_sdpa"
    ours = GenerationEngine(model, tokenizer, longer).generate(prompts)
    model.set_attn_implementation("sdpa")
    assert GenerationEngine(model, tokenizer, longer).generate(prompts) == ours


def _hardware(dtype, device="cpu"):
    return Hardware(device=device, dtype=dtype, name="test")


@pytest.mark.parametrize("fast", ["0", "1"])
def test_prediction_dtype_is_bf16_only_for_generation_on_a_fast_bf16_cpu(monkeypatch, fast):
    """Both CPU kinds, whatever this machine is: the detection is overridden and its cache cleared."""
    monkeypatch.setenv("TUNELAB_CPU_BF16", fast)
    cpu_has_fast_bf16.cache_clear()
    try:
        auto = ModelConfig()
        assert predict_dtype(auto, _hardware(torch.bfloat16), generative=True) == (
            torch.bfloat16 if fast == "1" else torch.float32)
        assert predict_dtype(auto, _hardware(torch.bfloat16), generative=False) == torch.float32  # class probabilities
        assert predict_dtype(auto, _hardware(torch.float32), generative=True) == torch.float32
        assert predict_dtype(ModelConfig(predict_dtype="float32"), _hardware(torch.bfloat16), True) == torch.float32
        assert predict_dtype(auto, _hardware(torch.float16, "cuda"), generative=False) == torch.float16
    finally:
        cpu_has_fast_bf16.cache_clear()


def test_server_row_cut_at_max_tokens_mid_syllable_sends_no_replacement_character(smollm_tokenizer):
    """SmolLM2 spends ~3 byte-level tokens per Hangul syllable: a reply cut at max_tokens inside a syllable must
    end before it (the batching server streams the text; a broken `\ufffd` used to end the reply)."""
    from tunelab.inference.batching import Finished, GenerationRequest, _Row

    ids = smollm_tokenizer("안녕하세요", add_special_tokens=False)["input_ids"]
    assert len(ids) > 5  # several tokens per syllable, so some cuts fall inside one
    for cut in range(1, len(ids) + 1):
        pieces = []
        row = _Row(GenerationRequest(prompt_ids=[1], max_tokens=cut, sink=pieces.append), smollm_tokenizer, "cpu")
        for token in ids[:cut]:
            if not row.done:
                row.step(token, stop_ids=set())
        text = "".join(p for p in pieces if isinstance(p, str))
        assert isinstance(pieces[-1], Finished) and pieces[-1].finish_reason == "length"
        assert "\ufffd" not in text and "안녕하세요".startswith(text), (cut, text)


def test_repetition_penalty_spares_the_tokens_that_end_a_reply():
    """Gemma's prompt holds `<end_of_turn>` (id 7 here) from earlier turns: the penalty must not push it down."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from tunelab.inference.engine import RepetitionPenaltySparingStops

    input_ids = torch.tensor([[5, 7, 3, 7]])
    scores = torch.tensor([[0.5, 1.0, 2.0, 3.0, -1.0, 4.0, 0.0, 6.0]])
    plain = RepetitionPenaltyLogitsProcessor(penalty=1.5)(input_ids, scores.clone())
    spared = RepetitionPenaltySparingStops(1.5, [7])(input_ids, scores.clone())
    assert plain[0, 7] == 4.0 and spared[0, 7] == 6.0  # the stop token keeps its score
    assert spared[0, 5] == plain[0, 5] == 4.0 / 1.5 and spared[0, 3] == plain[0, 3] == 2.0  # others penalised as usual
    assert torch.equal(spared[0, [0, 1, 2, 4, 6]], scores[0, [0, 1, 2, 4, 6]])
