"""Exact micro-batches for batches over a padded-token budget, so the longest bucket (8 x 512 tokens)
does not set peak memory (activations ~1.4 MB/token in fp32). The trainer adds the chunks' losses,
each divided by the whole batch's token count, so the sum equals the whole batch's loss."""
from __future__ import annotations

import torch


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
