"""Training presets: named bundles of defaults, each overridable from the CLI.

A preset only fills what the user left unset (None) in `train`; an explicit
value always wins.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    # Quick look at whether the data and setup work at all.
    "fast": dict(epochs=1, learning_rate=3e-4, batch_size=8, gradient_accumulation_steps=1,
                 max_length=256, scheduler="constant_with_warmup", warmup_ratio=0.03,
                 gradient_checkpointing=False),
    # The default: a sound recipe for most small/medium datasets.
    "balanced": dict(epochs=2, learning_rate=2e-4, batch_size=8, gradient_accumulation_steps=1,
                     max_length=512, scheduler="cosine", warmup_ratio=0.05,
                     gradient_checkpointing=False),
    # More passes, lower LR, longer context and NEFTune noise for better generalisation.
    "quality": dict(epochs=3, learning_rate=1e-4, batch_size=8, gradient_accumulation_steps=2,
                    max_length=1024, scheduler="cosine", warmup_ratio=0.1,
                    gradient_checkpointing=False, neftune_alpha=5.0),
    # Small micro-batches, accumulation and activation checkpointing to fit in little memory.
    "memory_efficient": dict(epochs=2, learning_rate=2e-4, batch_size=2, gradient_accumulation_steps=4,
                             max_length=512, scheduler="cosine", warmup_ratio=0.05,
                             gradient_checkpointing=True),
}


def apply_preset(train_section: dict, preset: str) -> dict:
    """Return train settings with the preset's values filled where unset."""
    merged = dict(train_section)
    for key, value in PRESETS[preset].items():
        if merged.get(key) is None:
            merged[key] = value
    merged["preset"] = preset
    return merged
