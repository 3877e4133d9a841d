"""Length-bucketed batch order: batches of similar length, so dynamic padding pads little.

Deterministic by (seed, epoch), so checkpoint resume replays the same order; it is a plain index
sampler, so accelerate shards it under DDP like any other (measured gains: bench/README.md).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch


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
    """Token length per example, or None when examples carry no `key` (then no bucketing). A pair example
    (`input_ids` + `input_ids_b`, a reward model's two sequences) counts its longer sequence."""
    try:
        return [max(len(dataset[i][key]), len(dataset[i].get(f"{key}_b", ()))) for i in range(len(dataset))]
    except (KeyError, TypeError, IndexError):
        return None
