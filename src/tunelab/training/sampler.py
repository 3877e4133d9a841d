"""Length-bucketed batch order: batches of similar length, so dynamic padding pads little.

Deterministic by (seed, epoch), so checkpoint resume replays the same order (measured gains: bench/README.md).
One process: a plain index sampler. Several (torchrun / accelerate launch): `ShardedBuckets` cuts each bucket
(one global batch) into one part per process, so in each step the ranks train on rows of similar length,
N processes at batch B train on exactly the rows one process sees at batch N*B, and in one epoch every
example is seen exactly once across the ranks (accelerate's own sharding of a plain sampler would top the
last step up with repeated rows).
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


class ShardedBuckets(torch.utils.data.Sampler[list[int]]):
    """Per-device batches for `num_processes` processes, in the order accelerate deals a batch sampler's batches
    out (round-robin: batch i goes to rank i % num_processes): each bucket of `buckets` is cut into
    `num_processes` contiguous parts of near-equal size. The last bucket, if it has fewer rows than processes,
    joins the one before it (each rank still gets a row; the step is a little larger). Parts may differ in
    size by one row: the loss is normalised by the token count over all ranks, so the gradient is the same.
    Only a data set smaller than the process count repeats rows (every rank needs one)."""

    def __init__(self, buckets: LengthBucketSampler, num_processes: int):
        if num_processes < 1:
            raise ValueError("num_processes must be >= 1")
        self.sampler = buckets  # accelerate's DataLoaderShard.set_epoch reaches the epoch through `.sampler`
        self.num_processes = num_processes

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def global_batches(self) -> list[list[int]]:
        batches = self.sampler.batches()
        if len(batches) > 1 and len(batches[-1]) < self.num_processes:
            tail = batches.pop()
            batches[-1] = batches[-1] + tail
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        n = self.num_processes
        for batch in self.global_batches():
            if len(batch) < n:  # fewer rows in the whole data set than processes
                batch = (batch * n)[:n]
            size, extra = divmod(len(batch), n)
            start = 0
            for rank in range(n):
                end = start + size + (1 if rank < extra else 0)
                yield batch[start:end]
                start = end

    def __len__(self) -> int:
        return len(self.global_batches()) * self.num_processes


def example_lengths(dataset, key: str = "input_ids") -> list[int] | None:
    """Token length per example, or None when examples carry no `key` (then no bucketing). A pair example
    (`input_ids` + `input_ids_b`, a reward model's two sequences) counts its longer sequence."""
    try:
        return [max(len(dataset[i][key]), len(dataset[i].get(f"{key}_b", ()))) for i in range(len(dataset))]
    except (KeyError, TypeError, IndexError):
        return None
