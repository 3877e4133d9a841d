"""PEFT (LoRA) setup on top of a loaded model."""
from __future__ import annotations

import json
from pathlib import Path

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


def trainable_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable / {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
