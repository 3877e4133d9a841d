"""Linear layers whose weights are also kept pre-packed for the CPU GEMM kernels: faster decode steps.

A decode step multiplies a handful of rows (one per sequence) by every weight matrix of the model. For such
skinny products the plain CPU `linear` spends much of its time laying the weight out for the kernel on every
call; packing it once, as inductor does when it freezes a CPU model, skips that. Measured on SmolLM2-135M, the
211 GEMMs of one 16-row decode step: fp32 65-70 -> 37-42 ms (MKL's packed sgemm, bit-identical results), bf16
46-63 -> 35-39 ms (oneDNN's packed format; results differ from the unpacked kernel in the last bits, as any two
bf16 kernels do). The same ops are neutral for prefill and training-sized products (measured at 314 and 1,024
rows), so only decode-shaped inputs (one position per row) take the packed path.

The packs are extra copies of the weights (as large as the weights), made lazily on the first decode step and
remade when a weight changes in place (its version counter moves) or, for fp32, when the number of rows changes
(MKL's pack is made for one row count). Anything that needs gradients, or another dtype or device, runs the
plain `F.linear` on the shared weight, so a packed model still trains and saves as before.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

_PACKABLE = (torch.float32, torch.bfloat16)


def _ops_available(dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear(nn.Linear):
    """An `nn.Linear` sharing another's parameters, with a packed copy of the weight for decode-shaped inputs.

    On the first packed call the result is checked against `F.linear`; a kernel that disagrees (or is missing on
    this CPU/torch build) turns the packed path off for this layer, which then behaves exactly like `nn.Linear`.
    """

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter objects: tied weights stay tied, state_dict is unchanged
        self.bias = linear.bias
        self._packed: torch.Tensor | None = None
        self._packed_key: tuple | None = None
        self.packing = True  # False after a failed check: plain F.linear from then on

    def __getstate__(self):
        # The packs are opaque oneDNN/MKL tensors that cannot be copied or pickled: copies repack on first use.
        state = self.__dict__.copy()
        state["_packed"], state["_packed_key"] = None, None
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        # A decode step's input is one dense position per row: [rows, 1, in_features]. The last-position slice a
        # prefill hands the LM head (`logits_to_keep=1`) has the same shape but strides of the whole prompt; it
        # stays on the plain path (no repacking for each prefill group).
        # One row (a single stream) is a matrix-vector product, as fast unpacked (measured) and not worth a copy.
        if (not self.packing or torch.is_grad_enabled() or x.dim() != 3 or x.shape[1] != 1 or x.shape[0] < 2
                or x.stride() != (self.in_features, self.in_features, 1)
                or x.dtype != w.dtype or x.device.type != "cpu" or w.dtype not in _PACKABLE
                or w.is_inference()):  # made under inference_mode: no version counter to see changes by
            return F.linear(x, w, self.bias)
        rows = x.shape[0]
        key = (w.data_ptr(), w._version, w.dtype, rows if w.dtype == torch.float32 else None)
        if key != self._packed_key:
            return self._pack_and_check(x, key, rows)
        return self._packed_linear(x, rows)

    def _packed_linear(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        if self.weight.dtype == torch.float32:
            return torch.ops.mkl._mkl_linear(x, self._packed, self.weight, self.bias, rows)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def _pack_and_check(self, x: torch.Tensor, key: tuple, rows: int) -> torch.Tensor:
        plain = F.linear(x, self.weight, self.bias)
        try:
            w = self.weight.detach()
            self._packed = (torch.ops.mkl._mkl_reorder_linear_weight(w, rows) if w.dtype == torch.float32
                            else torch.ops.mkldnn._reorder_linear_weight(w, rows))
            packed = self._packed_linear(x, rows)
            # fp32 (MKL) matched to the bit at 16 rows; bf16 kernels differ in rounding of the fp32 accumulations.
            tol = 1e-4 if w.dtype == torch.float32 else 2e-2
            ok = packed.shape == plain.shape and torch.allclose(packed.float(), plain.float(), rtol=tol, atol=tol)
        except (RuntimeError, NotImplementedError, AttributeError) as e:
            log.debug("packed linear unavailable (%s); plain linear", e)
            ok = False
        if not ok:
            self.packing, self._packed, self._packed_key = False, None, None
            return plain
        self._packed_key = key
        return plain


def pack_linears(model: nn.Module, max_bytes: int | None = None) -> int:
    """Swap every plain `nn.Linear` of a CPU model in fp32/bf16 for a `PackedLinear` sharing its parameters.

    Returns how many layers were swapped: 0 where the kernels are missing, the weights are elsewhere or in another
    dtype, or their packs would take more than `max_bytes`. Layers inside PEFT adapters are left alone (merging
    writes their weights through `.data`, which the version check would not see)."""
    if not isinstance(model, nn.Module):  # a stand-in with `generate` only
        return 0
    targets = []
    for parent in model.modules():
        if "peft" in type(parent).__module__:
            continue
        for name, child in parent.named_children():
            w = getattr(child, "weight", None)
            if (type(child) is nn.Linear and w is not None and w.device.type == "cpu" and w.dtype in _PACKABLE
                    and _ops_available(w.dtype)):
                targets.append((parent, name, child))
    weights = {id(child.weight): child.weight for _, _, child in targets}
    size = sum(w.numel() * w.element_size() for w in weights.values())
    if not targets or (max_bytes is not None and size > max_bytes):
        return 0
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)
