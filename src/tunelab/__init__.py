"""tunelab: fine-tune, evaluate and serve open language models on your own data, offline.

Public API: `train(config)`, `load(run_dir)`, `load_config(path, overrides)`, `build_config(dict)`.
Heavy imports (torch, transformers) happen on first use, so `import tunelab` stays fast.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["train", "load", "load_base", "load_config", "build_config", "UserError"]

from tunelab.errors import UserError


def __getattr__(name: str):
    if name == "train":
        from tunelab.training.recipe import train

        return train
    if name in ("load", "load_base"):
        from tunelab import api

        return getattr(api, name)
    if name in ("load_config", "build_config"):
        from tunelab import config

        return getattr(config, name)
    raise AttributeError(name)
