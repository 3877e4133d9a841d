"""Speed levers for training, each chosen by measurement (see bench/README.md).

- `LengthBucketSampler`: batches of similar length, so dynamic padding pads little.
  Deterministic by (seed, epoch), so checkpoint resume replays the same order;
  it is a plain index sampler, so accelerate shards it under DDP like any other.
- `supervised_positions` / `causal_lm_loss`: causal-LM loss computed only where a
  label exists. Prompt tokens (label -100) never go through the 49k-wide LM head,
  and the full (batch, length, vocab) fp32 logits tensor never exists.
- `linear_cross_entropy`: the LM head and the cross-entropy fused per chunk of rows; the gradient
  (softmax - one-hot) is formed in place in the forward, so neither the logits, their log-softmax nor
  a zero-filled gradient of that size is ever kept (on CPU those three passes were 11% of a LoRA step).
- `split_by_token_budget`: exact micro-batches for batches over a padded-token budget, so the
  longest bucket (8 x 512 tokens) does not set peak memory (activations ~1.4 MB/token in fp32).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class LengthBucketSampler(torch.utils.data.Sampler[int]):
    """Yields dataset indices so that each run of `batch_size` consecutive indices has similar lengths.

    Per epoch: shuffle (seeded by seed + epoch), cut into mega-batches of `batch_size * mega_batches`
    examples, sort each by length, cut into batches, then shuffle the batch order (the longest batch goes
    first so an out-of-memory shows up on step one, not hours in). Set `set_epoch` before iterating;
    accelerate's DataLoaderShard and the Trainer do that every epoch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batches: int = 64):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batches = mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        mega = self.batch_size * self.mega_batches
        batches: list[list[int]] = []
        for start in range(0, len(perm), mega):
            chunk = sorted(perm[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        # A short batch must stay last (the DataLoader cuts every batch_size indices); shuffle the full ones.
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        if batches:
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]])
            first = batches.pop(longest)
            order = torch.randperm(len(batches), generator=g).tolist()
            batches = [first] + [batches[i] for i in order]
        return batches + tail

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch


def example_lengths(dataset, key: str = "input_ids") -> list[int] | None:
    """Token length per example, or None when examples carry no `key` (then no bucketing)."""
    try:
        return [len(dataset[i][key]) for i in range(len(dataset))]
    except (KeyError, TypeError, IndexError):
        return None


def supervised_positions(labels: torch.Tensor) -> torch.Tensor:
    """Bool mask (batch, length): positions whose *next* token has a label, i.e. where a causal LM is scored."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None,
                   num_items_in_batch: torch.Tensor | int | None = None, chunk_size: int = 2048) -> torch.Tensor:
    """Next-token cross-entropy, identical to transformers' ForCausalLMLoss.

    `logits` is either the full (batch, length, vocab) tensor or, when `keep` is given, the
    (num_kept, vocab) rows the model computed for `keep`'s positions only (`logits_to_keep=keep`).
    The fp32 upcast happens per chunk of rows, so no full-size fp32 copy of the logits is made.
    Sum over tokens / num_items_in_batch when given (gradient-accumulation-correct), else the mean.
    """
    if keep is None:
        keep = supervised_positions(labels)
        logits = logits[keep]
    targets = kept_targets(labels, keep).to(logits.device)
    total = logits.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_size):
        part = logits[start : start + chunk_size].float()
        total = total + F.cross_entropy(part, targets[start : start + chunk_size], reduction="sum")
    return token_mean(total, targets.numel(), num_items_in_batch)


def kept_targets(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The next-token targets of `keep`'s positions, in the same (row-major) order as `hidden[keep]`."""
    return labels[:, 1:][keep[:, :-1]]


def token_mean(total: torch.Tensor, count: int, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
    """Summed loss / num_items_in_batch when given (gradient-accumulation-correct), else / this batch's count."""
    if num_items_in_batch is None:
        return total / max(count, 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), with gradients computed chunk by chunk in forward.

    The same idea as Liger's fused linear cross-entropy (a Triton kernel, CUDA only), in plain torch ops.
    Backward only scales the stored gradients by the incoming scalar gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, needs_grad):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs_grad[2] else None
        for start in range(0, targets.numel(), chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            # log-softmax and its gradient in place on the one logits block (no second vocab-wide buffer)
            logits = F.linear(h, weight, bias).float()
            logits -= logits.amax(dim=-1, keepdim=True)
            target_logit = logits.gather(1, t[:, None]).squeeze(1)
            sums = logits.exp_().sum(dim=-1)
            total += (sums.log() - target_logit).sum()
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            grad_logits = logits.div_(sums[:, None])  # softmax
            grad_logits[torch.arange(t.numel(), device=t.device), t] -= 1.0
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_size] = grad_logits.to(weight.dtype) @ weight
            if grad_weight is not None:
                grad_weight += grad_logits.t() @ h.float()
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        out = [None if g is None else (g * grad_total.to(g.dtype)).to(dtype)
               for g, dtype in zip(ctx.grads, ctx.dtypes)]
        ctx.grads = None
        return out[0], out[1], out[2], None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Summed cross-entropy of `F.linear(hidden, weight, bias)` against `targets` (no ignore index:
    pass only scored rows). Equal to `F.cross_entropy(F.linear(...).float(), targets, reduction="sum")`
    in value and gradient, at the memory of one (chunk_size, vocab) fp32 block."""
    grad_on = torch.is_grad_enabled()
    needs = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
             grad_on and bias is not None and bias.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size, needs)


def split_by_token_budget(batch: dict, budget: int) -> list[dict]:
    """Split a padded batch into row groups of at most `budget` padded tokens each, trimming padding.

    Rows are grouped longest-first; each group is cut to its own longest row (padding columns that
    no row in the group uses are dropped). Tensors whose first dimension is the batch are sliced;
    those shaped like input_ids are also trimmed. A row longer than the budget forms its own group.
    """
    input_ids = batch["input_ids"]
    rows = input_ids.shape[0]
    mask = batch.get("attention_mask")
    lengths = mask.sum(1) if mask is not None else torch.full((rows,), input_ids.shape[1])
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    groups: list[list[int]] = []
    for row in order:
        if groups:
            width = int(_used_width(mask, groups[-1] + [row], input_ids.shape[1]))
            if width * (len(groups[-1]) + 1) <= budget:
                groups[-1].append(row)
                continue
        groups.append([row])
    chunks = []
    for group in groups:
        index = torch.tensor(sorted(group))
        width = _used_width(mask, group, input_ids.shape[1])
        chunk = {}
        for key, value in batch.items():
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == rows:
                value = value[index]
                if value.shape[1:2] == input_ids.shape[1:2]:
                    value = value[:, :width]
            chunk[key] = value
        chunks.append(chunk)
    return chunks


def _used_width(mask: torch.Tensor | None, rows: list[int], full: int) -> int:
    """Columns up to the last real token of any of `rows` (all columns for left padding)."""
    if mask is None:
        return full
    used = mask[rows].any(0).nonzero()
    return int(used.max()) + 1 if used.numel() else full


_calibrated_threads: int | None = None


def calibrate_cpu_threads() -> int:
    """Set torch's intra-op CPU threads to whichever of 1..N runs a model-sized GEMM fastest; returns it.

    Measured on a shared 2-vCPU VM: 2 threads ran a 256x576 @ 576x1536 GEMM at 27 GFLOP/s, 1 thread at
    89; at 16 rows (batched decoding) 1.8 vs 39 GFLOP/s — the OpenMP barrier waits on a busy or
    SMT-sibling vCPU. On a quiet multi-core machine more threads win, so measure (~0.5 s), never assume.
    `OMP_NUM_THREADS`/`TUNELAB_THREADS` set by the user win.
    """
    import os
    import time

    global _calibrated_threads
    if _calibrated_threads is not None:
        return _calibrated_threads
    forced = os.environ.get("TUNELAB_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if forced:
        _calibrated_threads = torch.get_num_threads()
        if os.environ.get("TUNELAB_THREADS"):
            _calibrated_threads = int(forced)
            torch.set_num_threads(_calibrated_threads)
        return _calibrated_threads
    most = torch.get_num_threads()
    weight, rows = torch.randn(1536, 576), (torch.randn(16, 576), torch.randn(256, 576))
    candidates = sorted({1, max(1, most // 2), most})
    fastest = {threads: float("inf") for threads in candidates}
    # Interleaved rounds, best time per count: one busy moment must not decide the whole run.
    for _ in range(3):
        for threads in candidates:
            torch.set_num_threads(threads)
            for x in rows:
                F.linear(x, weight)  # warm-up
            start = time.perf_counter()
            for _ in range(3):
                for x in rows:
                    F.linear(x, weight)
            fastest[threads] = min(fastest[threads], time.perf_counter() - start)
    # More threads unless fewer are clearly (>15%) faster.
    best = most
    for threads in candidates:
        if fastest[threads] < fastest[best] / 1.15:
            best = threads
    torch.set_num_threads(best)
    _calibrated_threads = best
    return best
