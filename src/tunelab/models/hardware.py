"""Hardware detection: which device, which precision, and what it supports."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from tunelab.config.schema import ModelConfig
from tunelab.errors import UserError


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Hardware:
    device: str          # "cuda" | "mps" | "cpu"
    dtype: torch.dtype   # compute dtype for training/inference
    name: str

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    def describe(self) -> str:
        return f"{self.name} ({self.device}, {str(self.dtype).removeprefix('torch.')})"


def detect_hardware(config: ModelConfig) -> Hardware:
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device is `cuda` but no CUDA GPU is visible; use `auto` or `cpu`")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError("model.device is `mps` but Apple MPS is not available; use `auto` or `cpu`")
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif device == "mps":
        name, auto = "Apple GPU", torch.float16
    else:
        name = f"CPU x{torch.get_num_threads()} threads"
        auto = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    dtype = auto if config.dtype == "auto" else getattr(torch, config.dtype)
    if (config.load_in_4bit or config.load_in_8bit) and device != "cuda":
        raise UserError("4-bit/8-bit loading (bitsandbytes) needs a CUDA GPU; none is visible. "
                        "Drop model.load_in_4bit/load_in_8bit to train in full precision on this machine")
    if device == "cpu" and dtype == torch.float32:
        # oneDNN fp32 matmuls ("medium" = bf16x3 where supported) are faster than MKL on AMD at fp32-level error.
        torch.set_float32_matmul_precision("medium")
    return Hardware(device=device, dtype=dtype, name=name)
