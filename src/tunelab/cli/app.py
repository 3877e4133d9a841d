"""The typer application object and the error boundary shared by all CLI modules.

Each `cli/<verb>.py` module adds its commands to `app` (or a sub-app) on
import; `cli/main.py` imports them all. Commands stay thin: parse, call the
Python API, print.
"""
from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

from tunelab.errors import UserError

app = typer.Typer(name="tunelab", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Fine-tune, evaluate and serve open language models on your own data, offline.")
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def user_errors(fn):
    """Turn a UserError into one red line on stderr and exit code 2 — never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; a training run can continue with --resume")
            sys.exit(130)

    return wrapper
