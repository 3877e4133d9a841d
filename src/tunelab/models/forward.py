"""Batched class-probability inference for sequence-classification heads (a model-level helper that
classification tasks call; generation lives in tunelab.inference).

Examples are sorted by length so each padded batch wastes little compute;
probabilities come back in the caller's order, in float64.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from tunelab.metrics.classification import softmax


@torch.inference_mode()
def predict_probabilities(model, examples: list[dict], collate: Callable[[list[dict]], dict],
                          batch_size: int = 32) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    logits: list[np.ndarray | None] = [None] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([{k: v for k, v in examples[i].items() if k != "labels"} for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch).logits.float().cpu().numpy()
        for row, i in enumerate(idx):
            logits[i] = out[row]
    if not examples:
        return np.zeros((0, model.config.num_labels))
    return softmax(np.stack(logits))
