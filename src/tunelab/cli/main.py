"""Entry point: `tunelab` — imports each verb module so it registers its commands on `app`."""
from __future__ import annotations

import importlib
import os
import warnings

import typer

from tunelab.cli.app import app, console

# One module per verb group; importing a module registers its commands on `app`.
COMMAND_MODULES = ("train", "chat", "data", "info", "quickstart", "predict", "eval", "sweep", "lab", "serve", "ui")


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"tunelab.cli.{name}")


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context, version: bool = typer.Option(False, "--version", help="Versions and hardware, then exit.")):
    if version:
        from tunelab.models.hardware import environment_lines

        for line in environment_lines():
            console.print(line, soft_wrap=True)
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())
        raise typer.Exit(0)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' info/warning chatter and progress bars off, set through the environment it reads on import:
    # importing transformers here to call its logging API would cost ~1 s on every command, `--help` included.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    app()


_register()

if __name__ == "__main__":
    main()
