"""Batched class-probability inference for sequence-classification heads (a model-level helper that
classification tasks call; generation lives in tunelab.inference).

Examples are sorted by length so each padded batch wastes little compute;
probabilities come back in the caller's order, in float64.

Predictions run in the model's own dtype, never under a Trainer's mixed-precision autocast: accelerate
(Trainer with bf16/fp16) wraps `model.forward` *in place* with autocast and keeps the original as
`_original_forward`, so the model object the recipe evaluates after training would otherwise predict in
bf16 matmuls while `tunelab.load` predicts in `model.predict_dtype` (fp32 on CPU): the reported metrics
and a reload then differed by ~1e-3 in log loss.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from tunelab.metrics.classification import softmax


@contextmanager
def own_forward(model):
    """Run `model` with its own forward for a while: undo accelerate's in-place autocast wrapper (if any)."""
    original = model.__dict__.get("_original_forward")
    wrapped = model.__dict__.get("forward")
    if original is None or wrapped is None:
        yield model
        return
    model.forward = original
    try:
        yield model
    finally:
        model.forward = wrapped


@torch.inference_mode()
def predict_probabilities(model, examples: list[dict], collate: Callable[[list[dict]], dict],
                          batch_size: int = 32, head_logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
                          ) -> np.ndarray:
    """`head_logits` maps the model's logits for a collated batch to one row of class logits per example."""
    with own_forward(model):
        return _predict_probabilities(model, examples, collate, batch_size, head_logits or (lambda x: x))


def _predict_probabilities(model, examples, collate, batch_size, head_logits) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    logits: list[np.ndarray | None] = [None] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([{k: v for k, v in examples[i].items() if k != "labels"} for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = head_logits(model(**batch).logits).float().cpu().numpy()
        for row, i in enumerate(idx):
            logits[i] = out[row]
    if not examples:
        return np.zeros((0, head_logits(torch.zeros(0, model.config.num_labels)).shape[-1]))
    return softmax(np.stack(logits))
