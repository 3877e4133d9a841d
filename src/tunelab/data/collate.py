"""Batch collators: dynamic padding to the longest example in the batch. A leaf: tasks and training both use it."""
from __future__ import annotations

import torch

IGNORE_INDEX = -100
"""Label value the loss skips (PyTorch's cross-entropy default `ignore_index`)."""


class CausalLMCollator:
    """Pads input_ids with pad_token_id, labels with IGNORE_INDEX; attention_mask marks real tokens.

    Padding is on the right for training (positions stay 0..n-1 for every row).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        n = len(examples)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["input_ids"])
            input_ids[i, :k] = torch.tensor(e["input_ids"])
            labels[i, :k] = torch.tensor(e["labels"])
            attention[i, :k] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class PairCollator:
    """Pairs of sequences (`input_ids`/`input_ids_b`, as a reward model scores them) as one padded batch
    of 2N rows in the order a0, b0, a1, b1, ...; `labels` stays one per pair (N)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [seq for e in examples for seq in (e["input_ids"], e["input_ids_b"])]
        longest = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), longest), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(sequences), longest), dtype=torch.long)
        for i, seq in enumerate(sequences):
            input_ids[i, : len(seq)] = torch.tensor(seq)
            attention[i, : len(seq)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if all("labels" in e for e in examples):
            batch["labels"] = torch.tensor([e["labels"] for e in examples], dtype=torch.long)
        return batch
