"""Speed levers for training, each chosen by measurement (see bench/README.md).

- `LengthBucketSampler`: batches of similar length, so dynamic padding pads little.
  Deterministic by (seed, epoch), so checkpoint resume replays the same order;
  it is a plain index sampler, so accelerate shards it under DDP like any other.
- `supervised_positions` / `causal_lm_loss`: causal-LM loss computed only where a
  label exists. Prompt tokens (label -100) never go through the 49k-wide LM head,
  and the full (batch, length, vocab) fp32 logits tensor never exists.
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
    targets = labels[:, 1:][keep[:, :-1]].to(logits.device)
    total = logits.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_size):
        part = logits[start : start + chunk_size].float()
        total = total + F.cross_entropy(part, targets[start : start + chunk_size], reduction="sum")
    if num_items_in_batch is None:
        return total / max(targets.numel(), 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


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
    SMT-sibling vCPU. On a quiet multi-core machine more threads win, so measure (~0.1 s), never assume.
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
    best, best_time = most, float("inf")
    for threads in sorted({1, max(1, most // 2), most}):
        torch.set_num_threads(threads)
        for x in rows:
            F.linear(x, weight)  # warm-up
        start = time.perf_counter()
        for _ in range(5):
            for x in rows:
                F.linear(x, weight)
        elapsed = time.perf_counter() - start
        if elapsed < best_time * 0.9:  # prefer more threads unless fewer are clearly faster
            best, best_time = threads, elapsed
        elif threads > best and elapsed <= best_time * 1.1:
            best, best_time = threads, elapsed
    torch.set_num_threads(best)
    _calibrated_threads = best
    return best
