"""Causal-LM loss computed only where a label exists, equal to transformers' own in value and gradient.

- `supervised_positions` / `causal_lm_loss`: prompt tokens (label -100) never go through the 49k-wide
  LM head, and the full (batch, length, vocab) fp32 logits tensor never exists.
- `linear_cross_entropy`: the LM head and the cross-entropy fused per chunk of rows; the gradient
  (softmax - one-hot) is formed in place in the forward, so neither the logits, their log-softmax nor a
  zero-filled gradient of that size is ever kept (on CPU those three passes were 11% of a LoRA step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.data.collate import IGNORE_INDEX


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
    targets = kept_targets(labels, keep).to(logits.device)
    total = logits.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_size):
        part = logits[start : start + chunk_size].float()
        total = total + F.cross_entropy(part, targets[start : start + chunk_size], reduction="sum")
    return token_mean(total, targets.numel(), num_items_in_batch)


def kept_targets(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The next-token targets of `keep`'s positions, in the same (row-major) order as `hidden[keep]`."""
    return labels[:, 1:][keep[:, :-1]]


def token_mean(total: torch.Tensor, count: int, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
    """Summed loss / num_items_in_batch when given (gradient-accumulation-correct), else / this batch's count."""
    if num_items_in_batch is None:
        return total / max(count, 1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), with gradients computed chunk by chunk in forward.

    The same idea as Liger's fused linear cross-entropy (a Triton kernel, CUDA only), in plain torch ops.
    Backward only scales the stored gradients by the incoming scalar gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, needs_grad):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs_grad[2] else None
        for start in range(0, targets.numel(), chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            # log-softmax and its gradient in place on the one logits block (no second vocab-wide buffer)
            logits = F.linear(h, weight, bias).float()
            logits -= logits.amax(dim=-1, keepdim=True)
            target_logit = logits.gather(1, t[:, None]).squeeze(1)
            sums = logits.exp_().sum(dim=-1)
            total += (sums.log() - target_logit).sum()
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            grad_logits = logits.div_(sums[:, None])  # softmax
            grad_logits[torch.arange(t.numel(), device=t.device), t] -= 1.0
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_size] = grad_logits.to(weight.dtype) @ weight
            if grad_weight is not None:
                grad_weight += grad_logits.t() @ h.float()
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        out = [None if g is None else (g * grad_total.to(g.dtype)).to(dtype)
               for g, dtype in zip(ctx.grads, ctx.dtypes)]
        ctx.grads = None
        return out[0], out[1], out[2], None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Summed cross-entropy of `F.linear(hidden, weight, bias)` against `targets` (no ignore index:
    pass only scored rows). Equal to `F.cross_entropy(F.linear(...).float(), targets, reduction="sum")`
    in value and gradient, at the memory of one (chunk_size, vocab) fp32 block."""
    grad_on = torch.is_grad_enabled()
    needs = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
             grad_on and bias is not None and bias.requires_grad)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk_size, needs)
