"""tunelab: fine-tune, evaluate and serve open language models on your own data, offline.

Public API (tunelab.api): `train(config)`, `load(run_dir)` -> a run with `.predict`, `.evaluate`;
`load_base(model)`, `held_out_rows`, `ensemble`, `export_bundle`, `run_test_mode`; configs with
`load_config(path, overrides)` / `build_config(dict)`; generation scoring with `evaluate_generation`.
Heavy imports (torch, transformers) happen on first use, so `import tunelab` stays fast.
"""
from __future__ import annotations

__version__ = "0.1.0"
_API = ("train", "load", "load_base", "load_target", "held_out_rows", "ensemble", "export_bundle", "run_test_mode",
        "check_submission_file")
__all__ = [*_API, "load_config", "build_config", "evaluate_generation", "sweep", "UserError"]

from tunelab.errors import UserError


def __getattr__(name: str):
    if name in _API:
        from tunelab import api

        return getattr(api, name)
    if name in ("load_config", "build_config"):
        from tunelab import config

        return getattr(config, name)
    if name == "sweep":
        from tunelab.sweeps import sweep

        return sweep
    if name == "evaluate_generation":
        from tunelab.evaluation import evaluate_generation

        return evaluate_generation
    raise AttributeError(name)
