"""PEFT (LoRA) setup on top of a loaded model."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.config.schema import LoraConfig

ADDED_TOKENS_FILE = "tunelab_added_tokens.json"
"""Written by `tunelab lab tokens --add` into the model folder: {token: id} of the tokens it added."""


def added_token_ids(model_dir: str | Path) -> list[int]:
    """The ids of tokens `tunelab lab tokens --add` added to the model in `model_dir` (none: [])."""
    path = Path(model_dir) / ADDED_TOKENS_FILE if model_dir else None
    if path is None or not path.is_file():
        return []
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    tokens = manifest.get("tokens", manifest) if isinstance(manifest, dict) else {}
    return sorted(int(i) for i in tokens.values() if isinstance(i, int))


def apply_lora(model, config: LoraConfig, task_type: str, modules_to_save: list[str] | None = None,
               quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap `model` with LoRA adapters; return it unchanged when LoRA is off (full fine-tune)."""
    if not config.enabled:
        return model
    from peft import LoraConfig as PeftLoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    # New tokens start at the mean embedding; LoRA alone would never move their rows, so they train in full.
    tokens = config.trainable_token_indices
    if tokens is None:
        tokens = added_token_ids(getattr(model, "name_or_path", "") or "")
    peft_config = PeftLoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules, modules_to_save=modules_to_save,
        trainable_token_indices=tokens or None,
        task_type={"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}[task_type],
    )
    return get_peft_model(model, peft_config)


def skip_input_casts_under_autocast(model) -> int:
    """Let peft's LoRA layers skip casting their input to the adapter weights' dtype while autocast is on.

    A bf16 base with fp32 adapters (tunelab's LoRA default on a fast-bf16 CPU): peft casts each adapter's bf16
    input to fp32 and autocast casts it straight back to bf16 for the adapter's matmul, so the pair (and its
    backward) is pure copying, ~8-10% of a bf16 LoRA step on CPU (bench/README.md); the values are the same. A
    forward pre-hook decides per call, so a forward outside autocast keeps peft's cast. DoRA and other LoRA
    variants keep it too. Returns the number of layers hooked."""
    from peft.tuners.lora import LoraLayer

    hooked = 0
    for module in model.modules():
        if (isinstance(module, LoraLayer) and hasattr(module, "cast_input_dtype_enabled")
                and not getattr(module, "lora_variant", None) and not any(getattr(module, "use_dora", {}).values())):
            if _cast_input_outside_autocast_only not in module._forward_pre_hooks.values():  # once per layer
                module.register_forward_pre_hook(_cast_input_outside_autocast_only)
            hooked += 1
    return hooked


def _cast_input_outside_autocast_only(module, args) -> None:
    x = args[0] if args else None
    if torch.is_tensor(x):
        module.cast_input_dtype_enabled = not torch.is_autocast_enabled(x.device.type)


def trainable_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable / {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
