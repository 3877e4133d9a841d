"""`tunelab_sdpa`: the grouped bf16 attention for short CPU sequences equals SDPA; everything else is SDPA itself."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tunelab.models.attention as attention
from tunelab.models.attention import grouped_attention, tunelab_sdpa_forward
from tunelab.models.hardware import SHORT_ATTENTION


def _qkv(b=3, h=6, kv=2, t=12, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, t, d, generator=g).to(dtype).requires_grad_(True) for n in (h, kv, kv))
    return q, k, v


def _reference(q, k, v, mask):
    """fp32 SDPA over repeated key/value heads (what transformers' sdpa path computes), output [B, T, H, D]."""
    rep = q.shape[1] // k.shape[1]
    k, v = (x.float().repeat_interleave(rep, dim=1) for x in (k, v))
    out = F.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask, is_causal=mask is None)
    return out.transpose(1, 2)


def _padded_causal_mask(b, t, left_pad):
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    real = torch.arange(t)[None, :] >= torch.tensor(left_pad)[:, None]  # left padding, as a prompt batch has
    return causal[None, None] & real[:, None, None, :]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_attention_equals_sdpa_with_padding_and_gradients(dtype):
    q, k, v = _qkv(dtype=dtype)
    mask = _padded_causal_mask(3, 12, [0, 3, 11])
    out = grouped_attention(q, k, v, mask, scaling=16 ** -0.5)
    assert out.shape == (3, 12, 6, 16) and torch.isfinite(out).all()  # rows with no key (left pad) stay finite
    q2, k2, v2 = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    ref = _reference(q2, k2, v2, mask)
    real = mask[:, 0].any(-1)  # [B, T] query rows with at least one key
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(out.float()[real], ref[real], **tol)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) * real[:, :, None, None]
    (out.float() * grad).sum().backward()
    (ref.nan_to_num() * grad).sum().backward()
    for mine, theirs in ((q, q2), (k, k2), (v, v2)):
        assert torch.isfinite(mine.grad).all()
        torch.testing.assert_close(mine.grad.float(), theirs.grad.float(), **tol)


def test_grouped_attention_without_a_mask_is_causal():
    q, k, v = _qkv(kv=3, h=3)
    torch.testing.assert_close(grouped_attention(q, k, v, None, 16 ** -0.5), _reference(q, k, v, None),
                               rtol=1e-5, atol=1e-5)


class _Layer(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 3


@pytest.mark.parametrize("case, grouped", [("short_bf16", True), ("fp32", False), ("decode", False), ("long", False),
                                           ("dropout", False), ("compiling", False), ("inference", False),
                                           ("evaluation", True)])
def test_only_short_bf16_cpu_attention_takes_the_grouped_path(monkeypatch, case, grouped):
    """... outside inference mode: in it (the engine's prefill) torch's fused kernel is the faster one, forward
    only. Evaluation (eval mode, no grad) keeps the grouped path, so its losses are the training forward's."""
    calls = []
    monkeypatch.setattr(attention, "grouped_attention", lambda *a: calls.append("grouped") or a[0].transpose(1, 2))
    import transformers.integrations.sdpa_attention as sdpa

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **kw: calls.append("sdpa") or (a[1], None))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: case == "compiling")
    t = {"long": SHORT_ATTENTION, "decode": 1}.get(case, 8)
    dtype = torch.float32 if case == "fp32" else torch.bfloat16
    q = torch.zeros(2, 6, t, 16, dtype=dtype)
    k = v = torch.zeros(2, 2, max(t, 8), 16, dtype=dtype)
    layer = _Layer().train(case != "evaluation")
    with torch.inference_mode(case == "inference"), torch.set_grad_enabled(case != "evaluation"):
        tunelab_sdpa_forward(layer, q, k, v, None, dropout=0.1 if case == "dropout" else 0.0)
    assert calls == ["grouped" if grouped else "sdpa"]


@pytest.mark.e2e
def test_real_smollm2_trains_the_same_with_tunelab_sdpa(tmp_path, monkeypatch):
    """SmolLM2 in bf16 (forced: emulated on a CPU without bf16, slow but correct): loss and gradients of a padded
    batch with `tunelab_sdpa` (the grouped path) against transformers' own SDPA; the saved config names neither."""
    import json

    from tunelab.config.schema import ModelConfig
    from tunelab.models import detect_hardware, load_model, load_tokenizer

    cfg = ModelConfig(name_or_path="smollm2-135m-instruct", dtype="float32", device="cpu")
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, "causal_lm", detect_hardware(cfg), tokenizer=tokenizer, for_training=False,
                       dtype=torch.bfloat16)
    assert model.config._attn_implementation == "tunelab_sdpa"
    enc = tokenizer(["The capital of France is Paris, and the capital of Korea is Seoul.", "Hello there"],
                    return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)

    def loss_and_grad(implementation):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        loss = model(**enc, labels=labels).loss
        loss.backward()
        return loss.item(), model.model.layers[3].self_attn.q_proj.weight.grad.float().clone()

    calls = []
    real = attention.grouped_attention
    monkeypatch.setattr(attention, "grouped_attention", lambda *a: calls.append(1) or real(*a))
    ours = loss_and_grad("tunelab_sdpa")
    monkeypatch.undo()
    assert len(calls) == model.config.num_hidden_layers  # every layer took the grouped path
    theirs = loss_and_grad("sdpa")
    assert abs(ours[0] - theirs[0]) < 0.02 * theirs[0]
    cos = F.cosine_similarity(ours[1].flatten(), theirs[1].flatten(), dim=0)
    assert cos > 0.98, cos
    model.set_attn_implementation("tunelab_sdpa")
    model.save_pretrained(tmp_path)
    assert "tunelab" not in (tmp_path / "config.json").read_text() and json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_attention_attends_each_packed_sequence_alone(dtype):
    """Sequences packed into one row (a short one, one past SHORT_ATTENTION that takes SDPA, another short one):
    each position's output is what its own sequence alone gives, through the attention function's dispatch too."""
    sizes = [5, SHORT_ATTENTION + 20, 17]
    q, k, v = _qkv(b=1, h=6, kv=2, t=sum(sizes), dtype=dtype)
    bounds = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int32)
    out, _ = tunelab_sdpa_forward(_Layer().eval(), q, k, v, None, scaling=16 ** -0.5, cu_seq_lens_q=bounds,
                                  cu_seq_lens_k=bounds)
    assert out.shape == (1, sum(sizes), 6, 16)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        alone = _reference(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None)
        torch.testing.assert_close(out[:, a:b].float(), alone, **tol)
    # Without the boundaries it is plain causal attention over the whole row: the later sequences see the first.
    whole, _ = tunelab_sdpa_forward(_Layer().eval(), q, k, v, None, scaling=16 ** -0.5)
    assert not torch.allclose(whole[:, sizes[0]:].float(), out[:, sizes[0]:].float(), atol=1e-2)


def test_segment_calls_are_counted_only_inside_a_counting_block():
    q, k, v = _qkv(b=1, t=10)
    bounds = torch.tensor([0, 4, 10], dtype=torch.int32)
    with attention.counting_segment_calls() as calls:
        for _ in range(3):
            tunelab_sdpa_forward(_Layer().eval(), q, k, v, None, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds)
        tunelab_sdpa_forward(_Layer().eval(), q, k, v, None)  # not packed: not counted
        assert calls() == 3
    tunelab_sdpa_forward(_Layer().eval(), q, k, v, None, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds)
    assert attention._segment_calls.get() == -1


def _decode_mask(starts, written, width):
    """A decode step's mask over a static cache of `width` slots: row r attends slots [starts[r], written)."""
    slots = torch.arange(width)
    return ((slots[None] >= torch.tensor(starts)[:, None]) & (slots[None] < written))[:, None, None, :]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_reads_only_attended_slots_and_equals_sdpa(dtype, monkeypatch):
    """Rows left-padded by very different amounts over a static cache half written: the plan splits the rows
    into runs that skip their padding and the unwritten tail, and the result is SDPA's over the whole cache."""
    monkeypatch.setattr(attention, "CALL_COST_SLOTS", 160)  # a run pays off at a smaller gap than a real call's
    starts, written, width = [0, 0, 2, 60, 61, 64, 150, 155], 200, 260
    q, _, _ = _qkv(b=8, h=6, kv=2, t=1, dtype=dtype)
    _, k, v = _qkv(b=8, h=6, kv=2, t=width, dtype=dtype, seed=1)
    mask = _decode_mask(starts, written, width)
    plan = attention.decode_plan(mask)
    assert [(r0, r1) for r0, r1, _, _ in plan] == [(0, 3), (3, 6), (6, 8)]  # runs of similar padding
    assert all(s1 == written and s0 == min(starts[r0:r1]) for r0, r1, s0, s1 in plan)
    with torch.no_grad():
        out, _ = tunelab_sdpa_forward(_Layer().eval(), q, k, v, mask, scaling=16 ** -0.5)
    assert out.shape == (8, 1, 6, 16)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), _reference(q.detach(), k.detach(), v.detach(), mask), **tol)


def test_decode_plan_keeps_one_call_when_rows_are_alike_and_is_remade_for_each_mask():
    """Similar padding: one call, cut only at the unwritten tail. The plan is kept per mask object: a new mask
    (as each decode step makes, maybe in the memory of the last one) gets its own plan, never the last one's."""
    alike = _decode_mask([0, 1, 2, 3], 50, 80)
    assert attention.decode_plan(alike) == [(0, 4, 0, 50)]
    assert attention.decode_plan(alike) is attention.decode_plan(alike)
    del alike
    later = _decode_mask([0, 1, 2, 3], 51, 80)
    assert attention.decode_plan(later) == [(0, 4, 0, 51)]
    assert attention.decode_plan(_decode_mask([0, 1, 2, 3], 52, 80)) == [(0, 4, 0, 52)]
    # Past PLAN_ROWS rows the search is skipped: one run, still cut at the last written slot.
    many = attention.PLAN_ROWS + 1
    assert attention.decode_plan(_decode_mask([0] * (many // 2) + [70] * (many - many // 2), 75, 80)) == \
        [(0, many, 0, 75)]


def test_decode_steps_without_a_boolean_batch_mask_go_to_sdpa(monkeypatch):
    """No mask (one unpadded row), a float mask, or a mask broadcast over the batch: transformers' SDPA as before."""
    import transformers.integrations.sdpa_attention as sdpa

    calls = []
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **kw: calls.append("sdpa") or (a[1], None))
    monkeypatch.setattr(attention, "decode_attention", lambda *a: calls.append("decode") or a[0].transpose(1, 2))
    q = torch.zeros(2, 6, 1, 16)
    k = v = torch.zeros(2, 2, 10, 16)
    for mask in (None, torch.zeros(2, 1, 1, 10), torch.ones(1, 1, 1, 10, dtype=torch.bool),
                 torch.ones(2, 1, 1, 10, dtype=torch.bool)):
        tunelab_sdpa_forward(_Layer().eval(), q, k, v, mask)
    assert calls == ["sdpa", "sdpa", "sdpa", "decode"]
