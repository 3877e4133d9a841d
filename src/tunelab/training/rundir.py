"""The run directory: one folder per run holding everything needed to inspect, resume and reuse it.

    .tunelab-run       marker: tunelab created this folder for a run (JSON: version, time)
    config.yaml        resolved config (what actually ran)
    task_state.json    what the task learned from data (labels, ...)
    eval_rows.json     which data rows were held out (source file + 1-based row numbers)
    data_report.json   data-quality report per input file
    history.jsonl      one JSON object per logging/eval step
    metrics.json       final metrics, flat
    eval_predictions.jsonl  the final model's predictions on the held-out rows, with per-row scores
    train.log          what the run printed (plain text), written as it goes; a resumed run appends
    plots/loss.png     train/eval loss curves
    checkpoints/       Trainer checkpoints (resumable); each is written under a temporary name and renamed
                       when complete (training/trainer.py), so a `checkpoint-N` folder is a whole checkpoint
    final/             the trained adapter or full model + tokenizer

Safety rules (`RunDir.prepare`):
- tunelab writes a run only into a new folder, an empty one, or one it marked (`.tunelab-run`);
- `--overwrite` replaces only a marked folder, and only when every entry in it is one tunelab writes
  (RUN_ENTRIES): the old entries are moved aside into `.tunelab-replaced-<pid>/` and deleted once the new
  run has written its config (`commit`); a run that fails before that puts them back (`abandon`);
- a marked folder with no complete checkpoint and no final model (a run that failed or was killed before
  its first checkpoint) is restarted without --overwrite: nothing in it can be resumed.
A new file that some module writes into run directories must be added to RUN_ENTRIES, or --overwrite
refuses such runs (safe, but unhelpful).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tunelab.errors import UserError

MARKER = ".tunelab-run"
_REPLACED = ".tunelab-replaced-"
RUN_ENTRIES = frozenset({
    MARKER, "config.yaml", "task_state.json", "eval_rows.json", "data_report.json", "history.jsonl", "metrics.json",
    "eval_predictions.jsonl", "plots", "checkpoints", "final", "test_answers.json", "quickstart_samples.csv",
    "baseline.npz", "eval", "train.log", "tensorboard", "mlruns",  # the last two: train.report_to
})
_LOCKS: dict[str, int] = {}  # absolute run folder -> the fd holding its lock
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin",
                "model.safetensors.index.json", "pytorch_model.bin.index.json")


def _tunelab_leftover(name: str) -> bool:
    """Temporary names tunelab's own writes leave behind after a crash (io.atomic, checkpoint staging)."""
    return name.startswith((_REPLACED, ".tmp-", ".saving")) or (name.startswith(".") and ".tmp-" in name) \
        or (name.startswith(".") and ".old-" in name)


@dataclass(frozen=True)
class RunDir:
    path: Path
    created: bool = field(default=False, compare=False)  # prepare() made the folder
    aside: Path | None = field(default=None, compare=False)  # the replaced run's entries, until commit()

    config = property(lambda self: self.path / "config.yaml")
    task_state = property(lambda self: self.path / "task_state.json")
    eval_rows = property(lambda self: self.path / "eval_rows.json")
    data_report = property(lambda self: self.path / "data_report.json")
    history = property(lambda self: self.path / "history.jsonl")
    metrics = property(lambda self: self.path / "metrics.json")
    eval_predictions = property(lambda self: self.path / "eval_predictions.jsonl")
    train_log = property(lambda self: self.path / "train.log")
    plots = property(lambda self: self.path / "plots")
    checkpoints = property(lambda self: self.path / "checkpoints")
    final = property(lambda self: self.path / "final")
    marker = property(lambda self: self.path / MARKER)

    @staticmethod
    def default_path(task_name: str) -> Path:
        return Path("runs") / f"{task_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"

    # -- creating, replacing, restarting --------------------------------------------------------
    @classmethod
    def prepare(cls, path: str | Path, resume: bool, overwrite: bool, main: bool = True,
                echo=lambda line: None) -> "RunDir":
        """The folder for a run (see the module's safety rules). `main`: only the main process of a
        multi-process run checks, creates and moves anything; the others use the folder it prepares (creating
        it here too would race with its checks: "exists" between its test and its mkdir)."""
        run = cls(Path(path))
        try:
            if not main:
                return run
            if run.path.exists() and not run.path.is_dir():
                raise UserError(f"--output-dir {run.path} is a file, not a folder; choose a folder for the run")
            if not run.path.exists() and not resume:
                run.path.mkdir(parents=True)
                run = cls(run.path, created=True)
            if run.path.is_dir():
                run.lock()
            try:
                run._recover(echo)
                return run._prepare_resume() if resume else run._prepare_new(overwrite, echo)
            except BaseException:
                run.release()
                if run.created:
                    shutil.rmtree(run.path, ignore_errors=True)  # only what this call made: an empty folder
                raise
        except OSError as exc:
            raise UserError(_os_message(exc, f"cannot prepare the run directory {run.path}")) from None

    def _prepare_resume(self) -> "RunDir":
        if not self.config.is_file():
            if self.marker.exists():
                raise UserError(f"--resume: {self.path} stopped before its first checkpoint, so there is nothing to "
                                "resume; run the same command without --resume to start it again")
            what = "does not exist" if not self.path.exists() else "is not a tunelab run (no config.yaml)"
            raise UserError(f"--resume: {self.path} {what}; give the --output-dir of the run to continue")
        if not self.marker.exists():  # a run from before the marker existed: it is ours, mark it
            self.write_marker()
        return self

    def _prepare_new(self, overwrite: bool, echo) -> "RunDir":
        path = self.path
        entries = sorted(p.name for p in path.iterdir())
        if not entries:  # an empty folder the user made for the run
            self.write_marker()
            return self
        if not self.marker.exists():
            hint = (" (a run from an older tunelab? `--resume` still continues it)" if self.config.exists() else "")
            action = "--overwrite only replaces folders tunelab created for a run" if overwrite else \
                "tunelab writes a new run only into a new or empty folder"
            raise UserError(f"{path} is not empty and has no {MARKER} marker{hint}: {action}, so it will not write "
                            "into or delete it; choose another --output-dir")
        foreign = [name for name in entries if name not in RUN_ENTRIES and not _tunelab_leftover(name)]
        has_results = self.last_complete_checkpoint() is not None or self.has_final_model()
        if has_results and not overwrite:
            raise UserError(f"{path} already holds a run; use --resume to continue it, --overwrite to replace it, "
                            "or another --output-dir")
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UserError(f"{path} holds files tunelab did not write ({shown}); move them out first: "
                            "--overwrite and restarting only ever delete what tunelab wrote")
        if _inside(Path.cwd(), path):
            raise UserError(f"the current directory is inside --output-dir {path}; tunelab will not replace the "
                            "folder you are working in: change directory or choose another --output-dir")
        if not has_results:
            echo(f"{path}: an earlier run stopped before its first checkpoint (nothing to resume); starting it again")
        aside = path / f"{_REPLACED}{os.getpid()}-{int(time.time())}"
        aside.mkdir()
        run = RunDir(path, aside=aside)
        try:
            for name in entries:
                if not name.startswith(_REPLACED):
                    os.replace(path / name, aside / name)
            run.write_marker()
        except BaseException:
            run._restore_aside()  # every moved entry goes back
            raise
        return run

    def _restore_aside(self) -> None:
        for entry in self.aside.iterdir():
            target = self.path / entry.name
            if target.exists():  # written by the new run: the replaced run's entry wins
                shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
            os.replace(entry, target)
        self.aside.rmdir()

    def _recover(self, echo) -> None:
        """Finish what a killed `--overwrite` left: if the new run wrote its config, the replaced run is deleted
        (as it would have been); if not, the replaced run is put back."""
        leftovers = sorted(self.path.glob(f"{_REPLACED}*")) if self.path.is_dir() else []
        if not leftovers:
            return
        if self.config.exists():
            self.commit()
            return
        for entry in self.path.iterdir():
            if entry.name in RUN_ENTRIES or (_tunelab_leftover(entry.name) and entry not in leftovers):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for old in leftovers:
            for entry in old.iterdir():
                if not (self.path / entry.name).exists():
                    os.replace(entry, self.path / entry.name)
            shutil.rmtree(old, ignore_errors=True)
        echo(f"{self.path}: put back the run that an interrupted --overwrite was replacing")

    def lock(self) -> None:
        """Hold an exclusive lock on the folder while this process works in it: a second `train` into the
        same folder (a double --resume, an --overwrite of a running run) is refused, not interleaved."""
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock
            return
        key = os.path.abspath(self.path)
        if key in _LOCKS:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self.path} is in use by another tunelab training process; wait for it to finish "
                            "(or stop it) first") from None
        except OSError:  # a file system without locks
            os.close(fd)
            return
        _LOCKS[key] = fd

    def release(self) -> None:
        fd = _LOCKS.pop(os.path.abspath(self.path), None)
        if fd is not None:
            os.close(fd)

    def write_marker(self) -> None:
        import tunelab
        from tunelab.io import atomic_write_json

        atomic_write_json(self.marker, {"tunelab": tunelab.__version__,
                                        "created": datetime.now().isoformat(timespec="seconds")})

    def commit(self) -> None:
        """The new run has written its config: delete what it replaced (and any older leftovers)."""
        for old in self.path.glob(f"{_REPLACED}*"):
            shutil.rmtree(old, ignore_errors=True)

    def abandon(self) -> bool:
        """A new run failed before its first checkpoint: delete what it wrote, put back what it replaced (if it
        had not committed yet), and remove the folder if it is left empty and tunelab made it. True when the
        folder is gone or back as it was."""
        if not self.path.is_dir():
            return True
        if self.last_complete_checkpoint() is not None:
            return False  # resumable: nothing of it is deleted
        for entry in self.path.iterdir():
            if entry.name in RUN_ENTRIES or (_tunelab_leftover(entry.name) and entry != self.aside):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if self.aside is not None and self.aside.is_dir():
            self._restore_aside()
            return True
        if (self.created or self.aside is not None) and not any(self.path.iterdir()):
            self.path.rmdir()
        return True

    # -- state ---------------------------------------------------------------------------------
    def checkpoint_dirs(self) -> list[tuple[int, Path]]:
        """(step, folder) of every `checkpoint-N` folder, oldest first, complete or not."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints.iterdir()
                 if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
        return sorted(found)

    def last_complete_checkpoint(self) -> Path | None:
        complete = [p for _, p in self.checkpoint_dirs() if checkpoint_problem(p) is None]
        return complete[-1] if complete else None

    def last_checkpoint_step(self) -> int | None:
        """Step of the newest complete checkpoint (the one a resume starts from), or None."""
        last = self.last_complete_checkpoint()
        return checkpoint_step(last) if last is not None else None

    def has_final_model(self) -> bool:
        return (self.final / "config.json").exists() or (self.final / "adapter_config.json").exists()

    def is_finished(self) -> bool:
        """Training ran to the end and the final model and metrics were written."""
        return self.has_final_model() and "train_steps" in self.read_metrics()

    def read_eval_rows(self) -> dict | None:
        """{"source": file, "rows": [1-based row numbers]} of the held-out split, or None (older runs)."""
        return json.loads(self.eval_rows.read_text(encoding="utf-8")) if self.eval_rows.exists() else None

    def read_metrics(self) -> dict:
        if not self.metrics.exists():
            return {}
        try:
            return json.loads(self.metrics.read_text(encoding="utf-8"))
        except ValueError:
            return {}

    def read_history(self) -> list[dict]:
        if not self.history.exists():
            return []
        records = []
        for line in self.history.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass  # a line torn by a kill -9 mid-write: the rest of the history still counts
        return records


def checkpoint_step(folder: str | Path) -> int:
    match = CHECKPOINT_RE.match(Path(folder).name)
    return int(match.group(1)) if match else -1


def checkpoint_problem(folder: str | Path) -> str | None:
    """None if `folder` is a complete checkpoint, else what is missing. Complete: the Trainer's state
    (written after the weights, optimizer, scheduler and RNG state) parses, and the weights are there."""
    folder = Path(folder)
    state = folder / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (interrupted while saving?)"
    try:
        json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "trainer_state.json is unreadable (interrupted while saving?)"
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not any(folder.glob("*.safetensors")):
        return "no model weights"
    return None


def missing_optimizer_state(folder: str | Path) -> list[str]:
    """The optimizer/scheduler files a full resume needs that `folder` lacks."""
    return [name for name in ("optimizer.pt", "scheduler.pt") if not (Path(folder) / name).is_file()]


def _inside(inner: Path, outer: Path) -> bool:
    """`inner` lies strictly inside `outer`."""
    try:
        return outer.resolve() in inner.resolve().parents
    except OSError:
        return False


def _os_message(exc: OSError, what: str) -> str:
    import errno

    reason = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
              errno.ENOSPC: "disk full", errno.ENOTDIR: "a part of the path is a file, not a folder"}.get(
        exc.errno, (exc.strerror or str(exc)).lower())
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{what}: {reason}{where}"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ConsoleLog:
    """train.log: every line the run prints, as plain text (no terminal colour codes), flushed line by line so
    it is complete up to the moment a run is killed. A resumed run appends to it, from `start()` on: lines
    before it are kept back, so a resume that finds nothing to do leaves the run's files as they were."""

    def __init__(self, path: Path, append: bool = False):
        self.path, self.append = path, append
        self.file = None
        self.pending: list[str] = []
        self.started = self.closed = False

    def start(self) -> None:
        if self.started or self.closed:
            return
        self.started = True
        self.file = open(self.path, "a" if self.append else "w", encoding="utf-8")
        if self.append and self.file.tell():
            self.write(f"--- resumed {datetime.now().strftime('%Y-%m-%d %H:%M:%S')} ---")
        for line in self.pending:
            self.write(line)
        self.pending = []

    def write(self, line: str) -> None:
        if self.file is None:
            if not self.closed:
                self.pending.append(line)
            return
        try:
            self.file.write(_ANSI.sub("", str(line)) + "\n")
            self.file.flush()
        except (OSError, ValueError):  # a full disk must not stop a run over its log; the checkpoint writes say so
            pass

    def tee(self, echo):
        """`echo` that also writes each line here."""
        def both(line="", *args, **kwargs):
            self.write(line)
            return echo(line, *args, **kwargs)
        return both

    def close(self) -> None:
        self.closed = True
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None

    def add_after_close(self, line: str) -> None:
        """One more line into a started log that was closed (why a kept run stopped)."""
        if self.started:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(_ANSI.sub("", str(line)) + "\n")
            except OSError:
                pass
