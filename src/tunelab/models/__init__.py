"""Model resolution, hardware, loading and PEFT."""
from tunelab.models.hardware import Hardware, detect_hardware
from tunelab.models.loading import load_model, load_tokenizer
from tunelab.models.peft_setup import apply_lora, trainable_summary
from tunelab.models.registry import PACKAGED, list_models, resolve_model

__all__ = ["Hardware", "detect_hardware", "load_model", "load_tokenizer", "apply_lora", "trainable_summary",
           "PACKAGED", "list_models", "resolve_model"]
