"""tunelab's Trainer: transformers' Trainer with the batching and loss tunelab uses by default.

(Speed work — length-bucketed batches, fused/chunked loss, precision handling — lives here and in speed.py.)
"""
from __future__ import annotations

from transformers import Trainer


class TunelabTrainer(Trainer):
    """For now identical to transformers.Trainer; the fast path overrides sampler/loss here."""
