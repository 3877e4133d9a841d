"""PEFT (LoRA) setup on top of a loaded model."""
from __future__ import annotations

from tunelab.config.schema import LoraConfig


def apply_lora(model, config: LoraConfig, task_type: str, modules_to_save: list[str] | None = None,
               quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap `model` with LoRA adapters; return it unchanged when LoRA is off (full fine-tune)."""
    if not config.enabled:
        return model
    from peft import LoraConfig as PeftLoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    peft_config = PeftLoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=config.target_modules, modules_to_save=modules_to_save,
        task_type={"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}[task_type],
    )
    return get_peft_model(model, peft_config)


def trainable_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} trainable / {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"
