"""Regional compilation: `torch.compile` of a model's repeated block (each decoder layer), not the whole model.

All layers of a transformer run the same code, so inductor compiles one layer's forward and backward once and
every layer reuses it (dynamo lifts a module's weights into graph inputs); compile time is one block's, and
inductor's on-disk cache (on by default) serves later runs. What it buys: the elementwise work between the
matmuls (RMSNorm and its fp32 casts, rotary, SiLU x up, residual and LoRA adds, attention's reshapes) fused
into a few loops. Measured on a 2-core AVX512-BF16/AMX Xeon, SmolLM2-135M LoRA in bf16, 8 x 157 tokens a step:
3.6-4.2 s -> 2.7-3.0 s a step; compiling took 115 s cold and ~30 s from the cache; no gain at 512 tokens
(attention-bound there). So `train.compile_blocks` auto compiles only a CPU bf16 run long enough to earn its
compile time back (`COMPILE_PAYS_AFTER_S` of estimated training); `true`/`false` force it.

In place (`nn.Module.compile`): parameter names, state dicts, checkpoints and LoRA saving are unchanged.
"""
from __future__ import annotations

import torch

COMPILE_PAYS_AFTER_S = 1800.0
"""Estimated training seconds above which auto compiles. A run meets 6-7 graph variants (grad on/off, with or
without a padding mask, evaluation): cold, ~2 min for the first and up to a minute for each other on 2 cores,
~5 min in all; 25% of 30 minutes is 7.5."""


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks of the model's largest `ModuleList` whose children all share one class (a transformer's layers)."""
    best: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best) \
                and all(type(m) is type(module[0]) for m in module):
            best = list(module)
    return best if len(best) > 1 else []


def compile_repeated_blocks(model: torch.nn.Module) -> int:
    """Compile each repeated block in place, with dynamic shapes (batches differ in length: one graph for all
    lengths instead of a recompile per new shape). Returns how many blocks were compiled (0: none found)."""
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)


def compile_blocks_decision(setting: bool | None, device_type: str, bf16: bool, estimated_seconds: float | None,
                            processes: int = 1) -> tuple[bool, str]:
    """Whether to compile the repeated blocks, and why (one line for the run's log). `setting`: train.compile_blocks."""
    if setting is not None:
        return setting, f"train.compile_blocks={str(setting).lower()}"
    if device_type != "cpu" or not bf16:
        return False, "auto: measured to pay only for bf16 training on CPU"
    if processes > 1:
        return False, "auto: off with several processes (set train.compile_blocks=true to compile on every rank)"
    if estimated_seconds is None or estimated_seconds < COMPILE_PAYS_AFTER_S:
        return False, (f"auto: the run is estimated under {COMPILE_PAYS_AFTER_S / 60:.0f} min, too short to earn "
                       "the compile time back")
    return True, f"auto: a bf16 CPU run estimated over {COMPILE_PAYS_AFTER_S / 60:.0f} min"
