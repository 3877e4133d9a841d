"""Regional compilation: `torch.compile` of a model's repeated block (each decoder layer), not the whole model.

All layers of a transformer run the same code, so inductor compiles one layer's forward and backward once and
every layer reuses it (dynamo lifts a module's weights into graph inputs); compile time is one block's, and
inductor's on-disk cache (on by default) serves later runs. What it buys: the elementwise work between the
matmuls (RMSNorm and its fp32 casts, rotary, SiLU x up, residual and LoRA adds, attention's reshapes) fused
into a few loops. Measured on a 2-core AVX512-BF16/AMX Xeon, SmolLM2-135M LoRA in bf16, 8 x 157 tokens a step:
3.6-4.2 s -> 2.7-3.2 s a step; compiling took 115 s cold and ~35 s from the cache; no gain at 512 tokens
(attention-bound there). In a whole run it did not pay yet: a run meets 6-7 graph variants (grad on/off, a
padding mask or none, evaluation), each compiled on first sight, and the bench's 48-example epoch ran no faster
with the compile time left out (164.5 vs 165.4 real tok/s in one run, 165.1 vs 208.8 in a later one); on a quiet
host it ran 261.2 vs 239.0 in steady state, but the 42 s of compile + warm-up outweigh that gain in a 35 s epoch.
Since eager short batches run `tunelab_sdpa`'s grouped attention (`models.attention`; compiled blocks keep SDPA),
eager ran 257-321 against 255 compiled in steady state. So it is opt-in: `train.compile_blocks: true`.

In place (`nn.Module.compile`): parameter names, state dicts, checkpoints and LoRA saving are unchanged.
"""
from __future__ import annotations

import torch


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
