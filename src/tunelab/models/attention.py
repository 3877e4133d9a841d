"""`tunelab_sdpa`: transformers' SDPA attention, with faster CPU paths for three cases.

Registered with transformers' `AttentionInterface` (and its mask interface, as SDPA's boolean masks) and chosen at
load time for CPU models that would use "sdpa" (`models.loading`). Every other case (long sequences, fp32,
GPUs, dropout, softcapping, blocks under `torch.compile`) is transformers' own `sdpa_attention_forward`, unchanged.

- **Short bf16 sequences outside inference mode** (training and evaluation forwards, fewer than
  `SHORT_ATTENTION` positions): torch's fused CPU kernel is slow there (forward + backward 2x its math kernel at 157 positions) and its math
  kernel, reached through transformers' `repeat_kv`, copies every key/value head per query head and works in fp32.
  The grouped path multiplies each key/value head with all of its query heads at once (no repeat), in bf16 with
  fp32 accumulation inside the matmul and an fp32 softmax, as the fused kernel does for long sequences: forward +
  backward of one SmolLM2 layer (8 x 157 tokens) 27.7 -> 17.2 ms; 7.7 -> 5.3 ms at 64 positions; even with the
  fused kernel at 256 (51.7 vs 48.4 ms), which stays in use from there on. In inference mode (the engine's
  prefill) the fused kernel, 2.5-4x faster forward only, is used.
- **Decode steps** (one query position per row, any dtype) attend only over the cache slots their rows attend
  (`decode_attention`): the slots of a batch's left padding and, in a static cache, those not written yet were read
  at every layer and step all the same, though masked (exact, since a masked slot adds nothing).
- **Sequences packed end to end in one row** (`cu_seq_lens_q`, the varlen keywords of transformers' flash
  attention) are attended one sequence at a time (`segment_attention`): the engine prefills a batch's prompts that
  way, with no padding at all (`tunelab.inference.engine.prefill_by_length`).
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from tunelab.models.hardware import SHORT_ATTENTION  # from there on torch's fused kernel is the faster one

NAME = "tunelab_sdpa"


def grouped_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                      scaling: float) -> torch.Tensor:
    """Attention of query heads [B, H, T, D] over key/value heads [B, KV, S, D] (H a multiple of KV; query head
    h reads key/value head h // (H / KV), as `repeat_kv` does), `mask` boolean [B or 1, 1, T, S] (True attends) or
    None for causal. Returns [B, T, H, D]. A query row with no key to attend to (left padding) gets a uniform
    average instead of NaN, as transformers' eager attention does; such rows are padding and never read."""
    b, h, t, d = query.shape
    kv, s = key.shape[1], key.shape[2]
    g = h // kv
    if mask is None:
        mask = torch.ones(t, s, dtype=torch.bool, device=query.device).tril(s - t)[None, None]
    bias = torch.zeros(mask.shape, dtype=query.dtype, device=query.device)
    bias.masked_fill_(~mask, torch.finfo(query.dtype).min)
    q = (query * scaling).reshape(b, kv, g * t, d)
    scores = torch.matmul(q, key.transpose(-1, -2)).view(b, kv, g, t, s) + bias.unsqueeze(2)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype).view(b, kv, g * t, s)
    out = torch.matmul(probs, value).view(b, h, t, d)
    return out.transpose(1, 2).contiguous()


def segment_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_lens: torch.Tensor,
                      scaling: float) -> torch.Tensor:
    """Causal attention within each of the sequences packed into one row: query [1, H, T, D], key/value
    [1, KV, T, D], `cu_seq_lens` the T-position boundaries [0, n1, n1 + n2, ..., T]. Returns [1, T, H, D], what
    each sequence alone gives (grouped bf16 attention where `_grouped_is_faster`, else torch's SDPA)."""
    outs = []
    bounds = cu_seq_lens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        q, k, v = query[:, :, a:b], key[:, :, a:b], value[:, :, a:b]
        if _grouped_is_faster(q, k, b - a):
            outs.append(grouped_attention(q, k, v, None, scaling))
        else:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                                   enable_gqa=q.shape[1] != k.shape[1])
            outs.append(out.transpose(1, 2))
    if _segment_calls.get() >= 0:
        _segment_calls.set(_segment_calls.get() + 1)
    return torch.cat(outs, 1).contiguous()


# How many attention calls took the segment path in the current `counting_segment_calls` block (-1 outside one).
_segment_calls: ContextVar[int] = ContextVar("tunelab_segment_calls", default=-1)


@contextmanager
def counting_segment_calls():
    """Yields a function giving how many attention layers attended packed sequences one by one inside the block:
    a caller that packs sequences checks that every layer did (a model that does not pass `cu_seq_lens_q` on to its
    attention would have attended across sequences)."""
    token = _segment_calls.set(0)
    try:
        yield _segment_calls.get
    finally:
        _segment_calls.reset(token)


def _grouped_is_faster(query, key, positions: int) -> bool:
    """Where the grouped path beats torch's kernels: bf16 on CPU over fewer than `SHORT_ATTENTION` positions,
    outside inference mode."""
    # Under torch.compile (`train.compile_blocks`) the block's graph keeps SDPA: the grouped path's shape checks
    # guard every sequence length (recompiles) and inductor fuses attention's elementwise work itself.
    # In inference mode (the generation engine's prefill) the fused kernel is the faster one, forward only: one
    # prompt of 9/3 heads, bf16, 2-core Xeon: 30 positions 76 vs 265 us, 90: 166 vs 406, 250: 547 vs 2,014.
    # Evaluation in training (no_grad, not inference mode) stays on the grouped path on purpose: its losses are
    # then the training forward's numbers (`lab explain` rebuilds a step's loss from per-example losses; the two
    # kernels' bf16 roundings differ by ~0.5% on a loss), and gradient checkpointing's no-grad first forward and
    # its recompute take the same kernel.
    return (not torch.is_inference_mode_enabled() and not torch.compiler.is_compiling()
            and query.device.type == "cpu" and query.dtype == torch.bfloat16 and key.dtype == torch.bfloat16
            and positions < SHORT_ATTENTION and query.shape[1] % key.shape[1] == 0)


def _plain_call(module, dropout: float, kwargs) -> bool:
    """No dropout at work and no softcap, position bias or paged cache: the attention both tunelab paths compute."""
    return ((dropout == 0.0 or not module.training) and kwargs.get("softcap") is None
            and kwargs.get("position_bias") is None and kwargs.get("cache") is None)


def _segments_apply(query, key, kwargs) -> bool:
    q_bounds, k_bounds = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    return (q_bounds is not None and k_bounds is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
            and torch.equal(q_bounds, k_bounds) and not torch.compiler.is_compiling())


def _grouped_applies(query, key, attention_mask) -> bool:
    t = query.shape[2]
    return (t == key.shape[2] and 1 < t and _grouped_is_faster(query, key, t)
            and (attention_mask is None or attention_mask.dtype == torch.bool))


CALL_COST_SLOTS = 600
"""What one more attention call costs, in row x key-slot units: a bf16 decode call of SmolLM2 on a 2-core Xeon took
~70 us plus ~0.12 us a row and slot (4-16 rows x 16-244 slots, keys streaming from memory as in a model).
`decode_plan` splits rows off only where that saves more slots than this."""

PLAN_ROWS = 64

# The last decode mask seen and its plan: the 30-odd layers of a step share one mask.
_last_plan: tuple[weakref.ref, list[tuple[int, int, int, int]]] | None = None


def decode_plan(mask: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """How a decode step attends, for its boolean mask [B, 1, 1, S] (True attends): runs of rows
    `(first row, end row, first slot, end slot)` whose slots cover every slot those rows attend.

    A batch's cache is as wide as its longest prompt (left padding) plus the whole generation (a static cache),
    and every row used to read all of it at every layer and step: on the 16-prompt bench half the slots read were
    padding or not yet written. Masked slots add nothing to attention, so cutting them off is exact; rows are
    split into runs (in batch order, longest prompt first as the engine sorts them) only where a run's own first
    slot saves more than a call costs (`CALL_COST_SLOTS`). Planned once per mask object: a weak reference tells a
    step's shared mask from the next step's, even when that one reuses its memory."""
    global _last_plan
    memo = _last_plan
    if memo is not None and memo[0]() is mask:
        return memo[1]
    rows = mask.reshape(mask.shape[0], -1)  # [B, S]: one query position, one mask for all heads
    width = rows.shape[1]
    attends = rows.any(1)
    first = torch.where(attends, rows.int().argmax(1), width).tolist()
    last = torch.where(attends, width - rows.flip(1).int().argmax(1), 0).tolist()
    end = max(last) or width
    b = len(first)
    cuts = _cheapest_runs(first, end) if b <= PLAN_ROWS else [0, b]  # past PLAN_ROWS the search costs too much
    plan = [(i, j, min(min(first[i:j]), end - 1), end) for i, j in zip(cuts[:-1], cuts[1:])]
    _last_plan = (weakref.ref(mask), plan)
    return plan


def _cheapest_runs(first: list[int], end: int) -> list[int]:
    """Row boundaries [0, ..., B] of the runs that read the fewest slots, `CALL_COST_SLOTS` counted per run: runs
    are contiguous, so one O(B^2) pass over "the best cost of rows [0, j)" finds them."""
    b = len(first)
    best, cut = [0.0] + [float("inf")] * b, [0] * (b + 1)
    for j in range(1, b + 1):
        lo = end
        for i in range(j - 1, -1, -1):
            lo = min(lo, first[i])
            cost = best[i] + (j - i) * (end - lo) + CALL_COST_SLOTS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    cuts = [b]
    while cuts[-1] > 0:
        cuts.append(cut[cuts[-1]])
    return cuts[::-1]


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                     scaling: float) -> torch.Tensor:
    """One decode step's attention (query [B, H, 1, D] over key/value [B, KV, S, D], boolean `mask` [B, 1, 1, S])
    over the slots `decode_plan` keeps, each run of rows one SDPA call with its query heads packed per key/value
    head (transformers' `pack_gqa`: no repeated keys). Returns [B, 1, H, D]."""
    b, h, _, d = query.shape
    kv = key.shape[1]
    packed = query.reshape(b, kv, h // kv, d)
    outs = [torch.nn.functional.scaled_dot_product_attention(
        packed[r0:r1], key[r0:r1, :, s0:s1], value[r0:r1, :, s0:s1], attn_mask=mask[r0:r1, ..., s0:s1], scale=scaling)
        for r0, r1, s0, s1 in decode_plan(mask)]
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.reshape(b, 1, h, d)


def _decode_applies(query, key, attention_mask) -> bool:
    """A CPU decode step over a boolean-masked cache (the engine's static cache): what `decode_attention` serves."""
    return (query.shape[2] == 1 and query.device.type == "cpu" and attention_mask is not None
            and attention_mask.dtype == torch.bool and attention_mask.dim() == 4 and attention_mask.shape[1] == 1
            and attention_mask.shape[2] == 1 and attention_mask.shape[0] == query.shape[0]
            and attention_mask.shape[-1] == key.shape[2] and query.shape[1] % key.shape[1] == 0
            and not torch.compiler.is_compiling())


def tunelab_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    plain = _plain_call(module, dropout, kwargs)
    if causal and plain and _segments_apply(query, key, kwargs):
        return segment_attention(query, key, value, kwargs["cu_seq_lens_q"], scale), None
    if (attention_mask is not None or causal) and plain and _grouped_applies(query, key, attention_mask):
        return grouped_attention(query, key, value, attention_mask, scale), None
    if causal and plain and _decode_applies(query, key, attention_mask):
        return decode_attention(query, key, value, attention_mask, scale), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def register() -> str:
    """Make `tunelab_sdpa` known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, tunelab_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
