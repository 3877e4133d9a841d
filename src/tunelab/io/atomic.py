"""Atomic file and folder writes.

Everything tunelab produces goes through here: we write next to the target
and `os.replace` it into place, so a crash leaves either the old file or the
new one, never a truncated one.

Also here, for every command that writes a file the user named: `check_output_file` (one rule: an existing
output is replaced only with --overwrite, and never when it is one of the command's own inputs) and
`disk_full` (is this exception a full disk, whichever library raised it).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextlib.contextmanager
def atomic_path(target: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it into place on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        replace_path(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def replace_path(source: Path, target: Path) -> None:
    """Move `source` (a file or a complete folder) to `target`, replacing what is there whole."""
    if source.is_dir() and target.exists():
        # os.replace cannot swap a non-empty directory: move the old one aside first.
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def atomic_write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # small files: durable before the rename, so a power cut leaves old or new
    return Path(target)


def atomic_write_json(target: str | Path, obj: Any) -> Path:
    return atomic_write_text(target, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def append_jsonl(target: str | Path, record: dict) -> None:
    """Append one JSON line and flush it: a log that survives interruption line by line."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        f.flush()


def check_output_file(path: str | Path, overwrite: bool, inputs: Iterable[str | Path] = (),
                      option: str = "--output", protected: Iterable[str | Path] = ()) -> Path:
    """The one rule for a file a command writes: refuse an existing one unless `overwrite`; never replace
    a folder, one of the command's own inputs, or anything inside a `protected` folder (a run the command
    reads), even with --overwrite. Raises UserError."""
    from tunelab.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file name")
    for given in inputs:
        if given is not None and Path(given).exists() and path.exists() and _same(path, Path(given)):
            raise UserError(f"{option} {path} is also an input of this command; write the output to another file")
    for folder in protected:
        folder = Path(folder)
        if folder.resolve() in path.resolve().parents:
            raise UserError(f"{option} {path} is inside {folder}, which this command reads from; write the "
                            "output somewhere else")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it, or choose another {option}")
    if not path.parent.is_dir() and path.parent.exists():
        raise UserError(f"{option} {path}: {path.parent} is a file, not a folder")
    return path


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


DISK_FULL_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_DISK_FULL_TEXT = ("no space left", "storagefull", "disk quota exceeded", "file write failed", "errno 28")


def disk_full(exc: BaseException | None) -> bool:
    """True when `exc` (or what it was raised from) is a full disk or quota. torch.save and safetensors
    report it as RuntimeError/SafetensorError text rather than an OSError with errno ENOSPC."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc).lower() for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
