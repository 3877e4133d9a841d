"""The typer application object and the error boundary shared by all CLI modules.

Each `cli/<verb>.py` module adds its commands to `app` (or a sub-app) on
import; `cli/main.py` imports them all. Commands stay thin: parse, call the
Python API, print.
"""
from __future__ import annotations

import functools
import sys

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from tunelab.errors import UserError


def option_name(token: str) -> str:
    """Option names take `_` or `-` alike (`--batch_size` is `--batch-size`), so scripts written for other
    trainers work without a second spelling of every option cluttering `--help` (click's token_normalize_func)."""
    return token.replace("_", "-")


COMMAND_HINTS = {"interactive": "chat", "talk": "chat", "finetune": "train", "fine-tune": "train", "fit": "train",
                 "evaluate": "eval", "infer": "predict", "inference": "predict", "bundle": "export", "version": "env"}
"""Unknown commands people try first, and the command they mean (spelling alone would suggest another)."""


class TunelabGroup(typer.core.TyperGroup):
    """The root command group: an unknown command that is a common name for one of ours suggests that one."""

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except Exception as exc:  # click's UsageError ("No such command"); typer vendors click privately
            meant = COMMAND_HINTS.get(args[0].lower()) if args else None
            if hasattr(exc, "message") and meant in self.commands:
                exc.message = f"No such command {args[0]!r}. Did you mean {meant!r}?"
            raise


app = typer.Typer(name="tunelab", cls=TunelabGroup, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, context_settings={"token_normalize_func": option_name},
                  help="Fine-tune, evaluate and serve open language models on your own data, offline.")
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _one_line_usage_error(exc) -> None:
    """A bad option value or a missing argument (click's usage errors) reads like every other error: one
    `error:` line naming the option, not typer's multi-line panel."""
    if exc.__class__.__name__ == "NoArgsIsHelpError":  # `tunelab` alone prints the help instead
        return
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(exc.format_message())}{escape(hint)}",
                                                markup=True, soft_wrap=True)


try:
    from typer import rich_utils as _typer_rich

    _typer_rich.rich_format_error = _one_line_usage_error
except ImportError:  # typer without rich: click's plain `Error: ...` line
    pass


def user_errors(fn):
    """Turn a UserError into one red line on stderr and exit code 2 — never a traceback.

    Also one line, not a traceback: Ctrl-C / SIGTERM (exit 130; a training run's message says whether
    --resume can continue it), and the machine's own refusals to write: a full disk, a read-only file
    system, a permission denied (exit 2), with the path. Any other exception is a tunelab bug and keeps
    its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            err_console.print(f"[yellow]{escape(str(exc) or 'interrupted')}[/]", markup=True, soft_wrap=True)
            sys.exit(130)
        except OSError as exc:
            message = machine_refusal(exc)
            if message is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def machine_refusal(exc: OSError) -> str | None:
    """One line for an OSError that is the machine refusing a write (full disk, read-only, no permission)."""
    import errno

    from tunelab.io import disk_full

    where = f" {exc.filename}" if exc.filename else ""
    if disk_full(exc):
        return f"disk full while writing{where}; free some space and run the command again"
    if exc.errno == errno.EROFS:
        return f"cannot write{where}: read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where or ' (no path given)'}"
    return None


def warn_remote_code(enabled: bool) -> None:
    """--trust-remote-code: say once what it does, in yellow, before any model is loaded."""
    if enabled:
        err_console.print("[yellow]warning:[/] --trust-remote-code: Python code shipped with the model will run "
                          "on this machine; use it only for models and runs you trust", markup=True, soft_wrap=True)


TRUST_REMOTE_CODE_HELP = ("Run Python code shipped with the model (a run's config asking for it is ignored "
                          "without this flag). Only for models you trust.")
