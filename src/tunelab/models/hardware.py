"""Hardware detection: which device, which precision, and what it supports. Detection changes no setting."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator

import torch

from tunelab.config.schema import ModelConfig
from tunelab.errors import UserError


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 matmuls natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow.

    `TUNELAB_CPU_BF16=0|1` overrides the detection: 0 makes `dtype: auto` choose fp32 on a bf16 CPU (what an
    AVX2-only machine does, e.g. to compare or to run the test suite as such a machine would)."""
    forced = os.environ.get("TUNELAB_CPU_BF16")
    if forced is not None:
        if forced not in ("0", "1"):
            raise UserError(f"TUNELAB_CPU_BF16={forced!r}: set it to 0 or 1, or unset it to detect")
        return forced == "1"
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
        name = f"CPU ({os.cpu_count()} logical cores)"  # the thread count is chosen later (models/threads.py)
        auto = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    dtype = auto if config.dtype == "auto" else getattr(torch, config.dtype)
    if (config.load_in_4bit or config.load_in_8bit) and device != "cuda":
        raise UserError("4-bit/8-bit loading (bitsandbytes) needs a CUDA GPU; none is visible. "
                        "Drop model.load_in_4bit/load_in_8bit to train in full precision on this machine")
    return Hardware(device=device, dtype=dtype, name=name)


def matmul_precision(precision: str | None):
    """Run the block with torch's float32 matmul precision set to `precision` (`model.matmul_precision`),
    then restore the previous one. None: unchanged. Scoped because the setting is process-wide, and
    "high"/"medium" let fp32 matmuls run in TF32/bf16 (on bf16 CPUs too): a precision the user picks, not
    one detection may impose."""
    return torch_setting(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, precision)


@contextmanager
def torch_setting(get: Callable[[], Any], put: Callable[[Any], None], value: Any) -> Iterator[None]:
    """Run the block with a process-wide torch setting at `value` (None: unchanged), then restore it."""
    if value is None:
        yield
        return
    before = get()
    put(value)
    try:
        yield
    finally:
        put(before)


SHORT_ATTENTION = 256
"""Padded sequence length below which CPU attention in bf16 runs torch's plain math kernel (`attention_kernels`)."""


def attention_kernels(device_type: str, dtype: torch.dtype, seq_len: int):
    """The scaled-dot-product-attention kernels to use for a batch of `seq_len` padded positions.

    On CPU in bf16, torch's fused (flash) kernel is slower than its math kernel for short sequences: forward +
    backward of one attention layer (9 heads x 64, a 1024-token batch) took 41.8 vs 17.1 ms at 64 positions,
    39.3 vs 21.3 at 160, 28.9 vs 33.9 at 256 (AVX512-BF16/AMX Xeon, torch 2.13); in a SmolLM2 LoRA step on
    8 x 157 tokens it was a quarter of the step. fp32, GPUs and longer sequences keep torch's own choice.
    The math kernel is exact attention too (the same result up to rounding)."""
    if device_type == "cpu" and dtype == torch.bfloat16 and seq_len < SHORT_ATTENTION:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes. `ru_maxrss` is KiB on Linux but bytes on macOS."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def available_memory_bytes() -> int | None:
    """Memory the OS could still give this process without swapping (Linux `MemAvailable`); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = next((int(line.split()[1]) for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError):
        return None
    return kib * 1024 if kib is not None else None


def cpu_flags() -> list[str]:
    """The CPU features that decide tunelab's speed paths (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]


def environment_lines() -> list[str]:
    """What a bug report needs, one fact a line: versions, CPU features, the detected device and dtype."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def v(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    hardware = detect_hardware(ModelConfig())
    lines = [f"tunelab {v('tunelab')}", f"python {platform.python_version()} ({platform.platform()})"]
    lines += [f"{p} {v(p)}" for p in ("torch", "transformers", "peft", "accelerate")]
    lines.append(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
                 f"flags: {' '.join(cpu_flags()) or 'none of avx2/avx512/bf16/amx'}; fast bf16: {cpu_has_fast_bf16()}")
    lines.append(f"detected: {hardware.describe()}")
    if torch.cuda.is_available():
        lines.append(f"cuda {torch.version.cuda}: {', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))}")
    return lines
