"""Speed levers for training, each chosen by measurement (see bench/README.md).

- `LengthBucketSampler`: batches of similar length, so dynamic padding pads little.
  Deterministic by (seed, epoch), so checkpoint resume replays the same order;
  it is a plain index sampler, so accelerate shards it under DDP like any other.
- `supervised_positions` / `causal_lm_loss`: causal-LM loss computed only where a
  label exists. Prompt tokens (label -100) never go through the 49k-wide LM head,
  and the full (batch, length, vocab) fp32 logits tensor never exists.
- `configure_cpu_threads`, `precision_advice`: precision/threading choices per device.
"""
from __future__ import annotations

import math
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


def configure_cpu_threads() -> int:
    """Use one intra-op thread per physical core (SMT siblings slow GEMMs down); returns the count."""
    import os

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    threads = max(1, cores)
    torch.set_num_threads(threads)
    return threads


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
