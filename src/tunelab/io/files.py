"""Reading a file the user named: every failure is one UserError naming it (never a traceback)."""
from __future__ import annotations

from pathlib import Path

from tunelab.errors import UserError


def read_user_file(path: str | Path, what: str) -> bytes:
    """The bytes of `path`; `what` says in the message what was expected ("data file", "YAML config file")."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a {what}")
    try:
        return path.read_bytes()
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None
