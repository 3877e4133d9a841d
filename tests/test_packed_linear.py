"""Pre-packed CPU linear layers for decode steps: same results as `nn.Linear`, same parameters, safe fallbacks."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tunelab.config.schema import GenerationConfig, ModelConfig
from tunelab.inference.engine import GenerationEngine
from tunelab.models.packed_linear import PackedLinear, pack_linears


def _decode_input(rows=4, width=48, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 1, width, generator=g).to(dtype)


def _packed_pair(dtype=torch.float32, bias=True):
    torch.manual_seed(0)
    plain = nn.Linear(48, 80, bias=bias).to(dtype)
    return plain, PackedLinear(plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_decodes_like_linear_and_tracks_in_place_weight_changes(dtype):
    """bf16 runs here on any CPU: where oneDNN cannot pack bf16 the self-check turns packing off, same results."""
    plain, packed = _packed_pair(dtype)
    assert packed.weight is plain.weight and packed.bias is plain.bias
    x = _decode_input(dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    with torch.inference_mode():
        first, second = packed(x), packed(x)  # the first call packs and checks, the second uses the pack
        torch.testing.assert_close(first, plain(x), **tol)
        torch.testing.assert_close(second, plain(x), **tol)
    if dtype == torch.float32 and torch.backends.mkl.is_available():
        assert packed.packing and packed._packed is not None  # the packed kernel really ran
        torch.testing.assert_close(second, plain(x), rtol=1e-6, atol=1e-6)  # MKL's packed sgemm: the same sums
    with torch.no_grad():
        plain.weight.mul_(-2.0)  # in place (an optimizer step, a merge through the parameter)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), plain(x), **tol)  # repacked, not the stale copy


def test_packed_linear_trains_and_handles_other_shapes_like_linear():
    plain, packed = _packed_pair()
    reference = copy.deepcopy(plain)
    x = _decode_input(rows=3).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    packed(x).square().sum().backward()
    reference(x_ref).square().sum().backward()
    assert torch.equal(x.grad, x_ref.grad) and torch.equal(packed.weight.grad, reference.weight.grad)
    with torch.inference_mode():
        for shape in ((5, 48), (2, 7, 48), (1, 1, 48)):  # prefill, 2-D, one row: the plain path
            x = torch.randn(shape)
            assert torch.equal(packed(x), plain(x))
        prompt = torch.randn(3, 9, 48)
        last = prompt[:, -1:, :]  # what a prefill hands the LM head: decode-shaped, but strided
        assert torch.equal(packed(last), plain(last))


def test_a_packed_layer_copies_and_pickles_after_packing():
    import pickle

    plain, packed = _packed_pair()
    x = _decode_input()
    with torch.inference_mode():
        packed(x), packed(x)
    for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        assert clone._packed is None and torch.equal(clone.weight, plain.weight)
        with torch.inference_mode():
            torch.testing.assert_close(clone(x), plain(x), rtol=1e-6, atol=1e-6)
            clone(x)
        if torch.backends.mkl.is_available():
            assert clone._packed is not None  # repacked on first use


def test_a_packed_kernel_that_disagrees_turns_packing_off(monkeypatch):
    plain, packed = _packed_pair()
    monkeypatch.setattr(PackedLinear, "_packed_linear", lambda self, x, rows: torch.zeros(1))
    x = _decode_input()
    with torch.inference_mode():
        assert torch.equal(packed(x), plain(x)) and not packed.packing
        assert torch.equal(packed(x), plain(x))


def test_pack_linears_keeps_the_model_and_respects_the_memory_limit(tiny_llama, smollm_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    keys = {k: v.data_ptr() for k, v in model.state_dict().items()}
    linears = sum(type(m) is nn.Linear for m in model.modules())
    assert pack_linears(model, max_bytes=1) == 0 and sum(type(m) is nn.Linear for m in model.modules()) == linears
    assert pack_linears(model) == linears == 2 * 7 + 1  # 7 projections a block, and the LM head
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == keys  # same tensors, same names
    assert pack_linears(model) == 0  # already packed


def test_packed_engine_generates_what_the_plain_engine_generates(tiny_llama, smollm_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    words = "the quick brown fox jumps over the lazy dog and keeps on running through the field".split()
    prompts = [" ".join(words[:n]) for n in (2, 3, 16, 5, 15, 4, 9)]
    config = GenerationConfig(max_new_tokens=6, do_sample=False, repetition_penalty=1.0, batch_size=8)
    plain_engine = GenerationEngine(copy.deepcopy(model), smollm_tokenizer, config, pack_weights=False)
    engine = GenerationEngine(model, smollm_tokenizer, config)
    assert plain_engine.packed_layers == 0 and engine.packed_layers == 15
    assert engine.generate(prompts) == plain_engine.generate(prompts)
    if torch.backends.mkl.is_available():
        assert all(m._packed is not None for m in model.modules() if isinstance(m, PackedLinear))


@pytest.mark.e2e
def test_packed_decode_on_real_smollm2_keeps_greedy_outputs():
    """The real model in fp32 (the default on CPUs without fast bf16): packing changes no greedy token."""
    from tunelab.models import detect_hardware, load_model, load_tokenizer

    cfg = ModelConfig(name_or_path="smollm2-135m-instruct", dtype="float32", device="cpu")
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, "causal_lm", detect_hardware(cfg), tokenizer=tokenizer, for_training=False)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("Hi", "Name three colours of the rainbow, please, and say why the sky looks blue in daytime.",
                         "What is 2+2?", "Write one sentence about the sea.")]
    config = GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.0, batch_size=8)
    plain = GenerationEngine(model, tokenizer, config, pack_weights=False).generate(prompts)
    engine = GenerationEngine(model, tokenizer, config)
    assert engine.packed_layers == 30 * 7 + 1
    assert engine.generate(prompts) == plain and all(plain)
    if torch.backends.mkl.is_available():
        assert sum(m._packed is not None for m in model.modules() if isinstance(m, PackedLinear)) == 30 * 7 + 1
