"""How an encoder's sequence-classification head sees the sequence: its native pooler or a masked mean.

Sentence-embedding encoders (sentence-transformers folders such as the packaged all-MiniLM-L6-v2) were
trained to be read as the *mean* of their token states; their BERT `pooler` (CLS -> dense -> tanh) is a
leftover that training never touched. Read through that pooler, MiniLM's frozen features give banking77
0.894 accuracy with logistic regression; read as the mean, 0.930. So `model.pooling: auto` picks `mean`
where the folder says the model was trained that way (`1_Pooling/config.json`), else the native head.

Mean pooling keeps the model a plain transformers class (same weights, same state dict, same save/load):
two PyTorch forward hooks replace the pooler's output by the attention-masked mean of the token states it
receives. The unused pooler weights are frozen so DDP does not wait for their gradients.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.errors import UserError

POOLINGS = ("auto", "native", "mean")


def trained_pooling(model_dir: str | Path) -> str | None:
    """The pooling a sentence-transformers folder declares (`mean`, `cls`, ...), or None for other folders."""
    config = Path(model_dir) / "1_Pooling" / "config.json"
    if not config.is_file():
        return None
    try:
        modes = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    return None


def resolve_pooling(requested: str, model_dir: str | Path) -> str:
    """`auto` -> `mean` for a folder trained with mean pooling, else `native`."""
    if requested != "auto":
        return requested
    return "mean" if trained_pooling(model_dir) == "mean" else "native"


def _pooler_owner(model):
    """The backbone module holding `pooler` (BERT-like encoders), unwrapping PEFT."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if backbone is not None and isinstance(getattr(backbone, "pooler", None), torch.nn.Module):
        return backbone
    return None


def apply_pooling(model, pooling: str) -> None:
    """Make `model` pool as `pooling` (`native`: leave it; `mean`: masked mean of the last hidden states)."""
    if pooling == "native":
        return
    if pooling != "mean":
        raise UserError(f"model.pooling: unknown value `{pooling}`; use one of {', '.join(POOLINGS)}")
    backbone = _pooler_owner(model)
    if backbone is None:
        raise UserError(f"model.pooling: mean needs an encoder with a pooler (BERT-like); "
                        f"{type(model).__name__} has none (use model.pooling: native)")
    if getattr(backbone, "_tunelab_mean_pooling", False):
        return
    mask_of_call: dict[str, torch.Tensor | None] = {}

    def remember_mask(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        mask_of_call["mask"] = mask

    def masked_mean(module, args, output):
        hidden = args[0]
        mask = mask_of_call.get("mask")
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask[:, : hidden.shape[1]].unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    backbone.register_forward_pre_hook(remember_mask, with_kwargs=True)
    backbone.pooler.register_forward_hook(masked_mean)
    backbone.pooler.requires_grad_(False)
    backbone._tunelab_mean_pooling = True
