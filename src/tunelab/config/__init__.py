"""Run configuration: schema, presets, YAML io."""
from tunelab.config.io import build_config, load_config, parse_set_options, save_config
from tunelab.config.presets import PRESETS
from tunelab.config.schema import (
    DataConfig, GenerationConfig, LoraConfig, ModelConfig, RunConfig, TaskConfig, TrainConfig,
)

__all__ = [
    "RunConfig", "ModelConfig", "DataConfig", "LoraConfig", "TrainConfig", "GenerationConfig", "TaskConfig",
    "PRESETS", "build_config", "load_config", "save_config", "parse_set_options",
]
