"""Entry point: `tunelab` — imports each verb module so it registers its commands on `app`."""
from __future__ import annotations

import importlib
import os
import warnings

from tunelab.cli.app import app

# One module per verb group; a module that is not there (yet) is skipped.
COMMAND_MODULES = ("train", "chat", "data", "info", "quickstart", "predict", "eval", "lab", "serve")


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"tunelab.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tunelab.cli.{name}":
                raise


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    _register()
    app()


_register()

if __name__ == "__main__":
    main()
