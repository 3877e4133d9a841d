"""Metrics computed from predictions or logits (classification, preference)."""
from tunelab.metrics.classification import (
    classification_metrics, log_loss, macro_f1, map_at_k, softmax, top_k_indices,
)

__all__ = ["classification_metrics", "log_loss", "macro_f1", "map_at_k", "softmax", "top_k_indices"]
