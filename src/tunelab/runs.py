"""The runs in a folder as a front end shows them (the web UI, scripts): each run's task, model, status, key
metrics and duration; its curves, data report, prediction sample and confusion matrix; and training started as
a separate `tunelab train` process that outlives whoever started it.

Status is read from the run directory, never kept apart from it:
    running      a `tunelab train` process holds the folder's lock (or a process started here is alive)
    finished     the final model and the final metrics were written
    interrupted  stopped by Ctrl-C / SIGINT / SIGTERM or killed, with a checkpoint: `--resume` continues it
    failed       stopped by an error (train.log says which), or no checkpoint to continue from

Processes started here (`Jobs`) keep a small record, log and config under `<runs>/.tunelab-ui/`, never inside a
run directory (which holds only what training writes), so a run that failed before its first checkpoint (its
folder is removed by training) still shows, as failed, with its log.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import yaml

from tunelab.errors import UserError
from tunelab.training.rundir import MARKER, RunDir

STATUSES = ("running", "finished", "interrupted", "failed")
STATE_DIR = ".tunelab-ui"
"""Under the runs folder: jobs/ (records and logs of processes started here), configs/, uploads/."""
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")
HEADLINE_METRICS = ("eval_loss", "eval_accuracy", "eval_f1_macro", "eval_map@3", "eval_log_loss", "eval_rougeL",
                    "rougeL", "accuracy", "map@3", "log_loss", "train_loss")


def check_name(name: str, what: str = "run name") -> str:
    name = name.strip()
    if not NAME_RE.match(name):
        raise UserError(f"{what} `{name}`: use letters, digits, `.`, `_` and `-` (at most 80), starting with a "
                        "letter or digit")
    return name


# -- finding runs ------------------------------------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / MARKER).exists() or (path / "config.yaml").exists()) \
        and not (path / ".tunelab-bundle").exists()


def find_runs(root: str | Path) -> list[str]:
    """Names (relative paths) of the run folders under `root`: its sub-folders that are runs, and the runs one level
    further down (a sweep's trials)."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = []
    for child in sorted(root.iterdir()):
        if child.name.startswith((".", "_")) or not child.is_dir():
            continue
        if is_run_dir(child):
            names.append(child.name)
            continue
        try:
            names += [f"{child.name}/{g.name}" for g in sorted(child.iterdir())
                      if not g.name.startswith(".") and is_run_dir(g)]
        except OSError:
            continue
    return names


def run_path(root: str | Path, name: str) -> Path:
    """The folder of run `name` under `root`; a UserError for a name outside it or not a run."""
    root = Path(root).resolve()
    path = (root / name).resolve()
    if root not in path.parents or any(part.startswith(".") for part in Path(name).parts):
        raise UserError(f"no run named `{name}` in {root}")
    if not path.is_dir():
        raise UserError(f"no run named `{name}` in {root}")
    if not is_run_dir(path):
        raise UserError(f"`{name}` is a folder in {root} but not a tunelab run (no config.yaml)")
    return path


# -- status ----------------------------------------------------------------------------------------------------
def _locked(path: Path) -> bool:
    """A process holds the folder's training lock (RunDir.lock, an flock): read from /proc/locks, never by taking the
    lock, which could make a starting `tunelab train` fail. False where /proc/locks does not exist."""
    try:
        inode = os.stat(path).st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        fields = line.split()
        if "FLOCK" in fields and any(f.endswith(f":{inode}") for f in fields):
            return True
    return False


def _stopped_line(run: RunDir) -> str | None:
    """The `stopped: ...` line training adds to train.log when a kept run ends early (its last one)."""
    try:
        with open(run.train_log, "rb") as f:
            f.seek(max(0, os.path.getsize(run.train_log) - 8192))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        if line.startswith("--- resumed"):
            return None
        if line.startswith("stopped:"):
            return line
    return None


def run_status(path: Path, job: dict | None = None) -> tuple[str, str]:
    """(status, one line saying why) of the run in `path`; `job`: a process started for it here, if any."""
    run = RunDir(path)
    if (job and job.get("alive")) or _locked(path):
        return "running", "a tunelab train process is writing it"
    if run.has_final_model() and "train_steps" in read_metrics(run):
        return "finished", f"{read_metrics(run)['train_steps']} steps; final model in final/"
    stopped = _stopped_line(run)
    checkpoint = run.last_complete_checkpoint()
    if stopped and "interrupted" in stopped:
        return "interrupted", stopped.removeprefix("stopped: ")
    if stopped:
        return "failed", stopped.removeprefix("stopped: ")
    if checkpoint is not None:
        return "interrupted", f"stopped without a final model; {checkpoint.name} can be resumed"
    if job and job.get("returncode") not in (None, 0):
        return "failed", f"the training process exited with code {job['returncode']}"
    return "failed", "stopped before its first checkpoint (no checkpoint, no final model)"


# -- reading a run ---------------------------------------------------------------------------------------------
def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_config_tree(run: RunDir) -> dict:
    """The run's saved config as plain data (not validated: a run from another version still shows)."""
    try:
        tree = yaml.safe_load(run.config.read_text(encoding="utf-8")) if run.config.exists() else {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{run.config} cannot be read: {str(exc).splitlines()[0]}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise UserError(f"{run.config} is not a run config (not a mapping)")
    return tree


def read_metrics(run: RunDir) -> dict:
    metrics = run.read_metrics()
    return metrics if isinstance(metrics, dict) else {}


def read_history(run: RunDir) -> list[dict]:
    """history.jsonl's records (a torn or foreign line is skipped)."""
    return [r for r in run.read_history() if isinstance(r, dict)]


def headline_metrics(metrics: dict, limit: int = 4) -> dict:
    shown = {k: metrics[k] for k in HEADLINE_METRICS if isinstance(metrics.get(k), (int, float))}
    return dict(list(shown.items())[:limit])


def _started(run: RunDir) -> float | None:
    created = _read_json(run.marker, {}).get("created") if run.marker.exists() else None
    if isinstance(created, str):
        try:
            return datetime.fromisoformat(created).timestamp()
        except ValueError:
            pass
    for candidate in (run.config, run.path):
        try:
            return candidate.stat().st_mtime
        except OSError:
            continue
    return None


def _last_write(run: RunDir) -> float | None:
    times = []
    for candidate in (run.train_log, run.history, run.metrics, run.final):
        try:
            times.append(candidate.stat().st_mtime)
        except OSError:
            pass
    return max(times) if times else None


def summarize(root: str | Path, name: str, job: dict | None = None) -> dict:
    """One row of the runs list. A run folder that cannot be read is a row with status failed and the reason."""
    path = Path(root) / name
    run = RunDir(path)
    row = {"name": name, "task": "", "model": "", "status": "failed", "detail": "", "metrics": {}, "started": None,
           "duration_s": None, "steps": None}
    try:
        tree = read_config_tree(run)
        task = tree.get("task")
        row["task"] = str(task.get("name", "") if isinstance(task, dict) else task or "")
        model = tree.get("model") if isinstance(tree.get("model"), dict) else {}
        row["model"] = str(model.get("name_or_path", ""))
        row["status"], row["detail"] = run_status(path, job)
    except UserError as exc:
        row["detail"] = str(exc)
        return row
    metrics = read_metrics(run)
    row["metrics"] = headline_metrics(metrics)
    history = read_history(run)
    steps = [r["step"] for r in history if isinstance(r.get("step"), int)]
    row["steps"] = metrics.get("train_steps") or max(steps, default=None)
    started = _started(run)
    end = time.time() if row["status"] == "running" else _last_write(run)
    row["started"] = started
    if started and end:
        row["duration_s"] = round(max(0.0, end - started), 1)
    return row


def list_runs(root: str | Path, jobs: "Jobs | None" = None) -> list[dict]:
    """Every run under `root` (newest first), and runs started here whose folder is gone (failed before their
    first checkpoint: training removed what they wrote)."""
    found = find_runs(root)
    rows = [summarize(root, name, jobs.get(name) if jobs else None) for name in found]
    if jobs:
        for job in jobs.all():
            if job["name"] not in found and job.get("kind") == "train":
                alive = job.get("alive")
                rows.append({"name": job["name"], "task": job.get("task", ""), "model": job.get("model", ""),
                             "status": "running" if alive else "failed",
                             "detail": "starting" if alive else (job.get("last_line") or "the training process "
                                                                 f"exited with code {job.get('returncode')}"),
                             "metrics": {}, "started": job.get("started"), "steps": None,
                             "duration_s": round((time.time() if alive else job.get("ended") or job["started"])
                                                 - job["started"], 1), "no_folder": True})
    rows.sort(key=lambda r: -(r["started"] or 0))
    return rows


def curves(history: list[dict]) -> dict[str, list[list[float]]]:
    """[step, value] series: train loss, eval loss (from step 0: the evaluation before training) and every other
    numeric eval metric logged during training, learning rate."""
    out: dict[str, list[list[float]]] = {"loss": [], "eval_loss": []}
    for record in history:
        if record.get("after_training"):
            continue
        step = record.get("step", 0)
        if "eval_before_loss" in record:
            out["eval_loss"].insert(0, [0, record["eval_before_loss"]])
        for key, value in record.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key == "loss" or key == "learning_rate" or (key.startswith("eval_") and not key.startswith("eval_before")
                                                           and not key.endswith(("runtime", "per_second", "_time"))):
                out.setdefault(key, []).append([step, value])
    return {k: v for k, v in out.items() if v}


def _jsonl_records(path: Path) -> Iterator[dict]:
    """The JSON objects of a .jsonl file, read lazily; torn or foreign lines are skipped. OSError propagates."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def read_jsonl_sample(path: Path, rows: int = 10, max_chars: int = 400) -> list[dict]:
    out = []
    try:
        for record in _jsonl_records(path):
            if len(out) >= rows:
                break
            out.append({k: (v[:max_chars] + "…" if isinstance(v, str) and len(v) > max_chars else v)
                        for k, v in record.items()})
    except OSError:
        pass
    return out


def confusion_matrix(path: Path, max_labels: int = 30) -> dict | None:
    """{labels, matrix[true][predicted]} from eval_predictions.jsonl rows with a `label` and a `prediction`; None
    when the rows have no labels (not a classifier)."""
    try:
        pairs = [(str(r["label"]), str(r["prediction"])) for r in _jsonl_records(path) if "label" in r and "prediction" in r]
    except OSError:
        return None
    if not pairs:
        return None
    counts: dict[str, int] = {}
    for true, _ in pairs:
        counts[true] = counts.get(true, 0) + 1
    labels = sorted(counts, key=lambda k: (-counts[k], k))[:max_labels]
    labels += sorted({p for _, p in pairs if p not in labels})[: max(0, max_labels - len(labels))]
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for true, predicted in pairs:
        if true in index and predicted in index:
            matrix[index[true]][index[predicted]] += 1
    return {"labels": labels, "matrix": matrix, "rows": len(pairs), "shown_all": len(counts) <= max_labels}


def train_log_tail(run: RunDir, lines: int = 40) -> list[str]:
    try:
        with open(run.train_log, "rb") as f:
            f.seek(max(0, os.path.getsize(run.train_log) - 16384))
            return f.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return []


TIME_ESTIMATE_RE = re.compile(r"estimated training time: .*")


def read_run(root: str | Path, name: str, job: dict | None = None) -> dict:
    """Everything a run's page shows. UserError: no such run, or its config cannot be read. A run started here whose
    folder does not exist (yet: the process is loading; or any more: it failed before its first checkpoint) shows
    its process's state and output."""
    if job and job.get("kind") == "train" and not (Path(root) / name).exists():
        return _pending_run(name, job)
    path = run_path(root, name)
    run = RunDir(path)
    tree = read_config_tree(run)
    row = summarize(root, name, job)
    metrics = read_metrics(run)
    report = _read_json(run.data_report, [])
    log = train_log_tail(run, 400)
    estimates = [m.group(0) for line in log if (m := TIME_ESTIMATE_RE.search(line))]
    return {
        **row,
        "config_text": yaml.safe_dump(tree, sort_keys=False, allow_unicode=True) if tree else "",
        "all_metrics": metrics,
        "curves": curves(read_history(run)),
        "data_report": [r for r in report if isinstance(r, dict)] if isinstance(report, list) else [],
        "predictions": read_jsonl_sample(run.eval_predictions),
        "confusion": confusion_matrix(run.eval_predictions),
        "rouge": {k: v for k, v in metrics.items() if "rouge" in k.lower() and isinstance(v, (int, float))},
        "log_tail": log[-40:],
        "time_estimate": estimates[-1] if estimates else None,
        "resumable": row["status"] == "interrupted" or (row["status"] == "failed"
                                                        and run.last_complete_checkpoint() is not None),
        "exportable": row["status"] == "finished",
        "has_final": run.has_final_model(),
    }


def _pending_run(name: str, job: dict) -> dict:
    alive = bool(job.get("alive"))
    try:
        lines = Path(job["log"]).read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
    except (OSError, KeyError):
        lines = []
    end = time.time() if alive else (job.get("ended") or job["started"])
    return {"name": name, "task": job.get("task", ""), "model": job.get("model", ""),
            "status": "running" if alive else "failed",
            "detail": "starting: reading the data and loading the model" if alive else
            (job.get("last_line") or f"the training process exited with code {job.get('returncode')}"),
            "metrics": {}, "started": job.get("started"), "duration_s": round(end - job["started"], 1), "steps": None,
            "config_text": "", "all_metrics": {}, "curves": {}, "data_report": [], "predictions": [], "confusion": None,
            "rouge": {}, "log_tail": lines, "time_estimate": None, "resumable": False, "exportable": False,
            "has_final": False, "no_folder": True}


# -- validating a config from a form ------------------------------------------------------------------------------
def validate_config(raw: dict, overrides: dict[str, Any], source: str = "config"):
    """(RunConfig or None, {dotted key or "": message}): the config `tunelab train` would build from `raw` and the
    `overrides`, validated by the same schema; each problem keyed by the setting it is about."""
    from tunelab.config import build_config

    try:
        return build_config(raw, overrides, source=source, override_source="form"), {}
    except UserError as exc:
        return None, field_errors(str(exc))


_KEYED = re.compile(r"^(?:(?P<where>[^`]*?): )?(?:unknown key |unknown preset )?`(?P<key>[A-Za-z0-9_.@-]+)`:? ?(?P<rest>.*)$")


def field_errors(message: str) -> dict[str, str]:
    """A config UserError's `; `-separated problems keyed by the dotted key each names ("" for the others)."""
    errors: dict[str, str] = {}
    for part in message.split("; "):
        part = part.strip()
        match = _KEYED.match(part)
        if match and "." in match.group("key"):
            key = match.group("key")
        elif "unknown preset" in part:
            key = "train.preset"
        else:
            key = ""
        text = part.split(": ", 1)[1] if part.startswith(("form: ", "command line: ")) else part
        if key and key in errors:
            errors[key] += "; " + text
        elif not key and "" in errors:
            errors[""] += "; " + text
        else:
            errors[key] = text
    return errors


def planned_steps(config, train_rows: int) -> int:
    import math

    t = config.train
    if t.max_steps:
        return t.max_steps
    return max(1, math.ceil(math.ceil(train_rows / (t.batch_size * t.gradient_accumulation_steps)) * (t.epochs or 1)))


def estimate(config, root: str | Path | None = None) -> dict:
    """What starting `config` means before any model loads: train/eval rows, planned steps, and a time estimate
    from finished runs in `root` with the same model, batch size and max_length (seconds per step), if any."""
    from tunelab.data.pipeline import load_splits
    from tunelab.tasks import get_task

    if not config.data.train_path:
        raise UserError("`data.train_path`: pick a data file")
    task = get_task(config.task.name)(config)
    splits = load_splits(config, task)
    steps = planned_steps(config, len(splits.train))
    out = {"train_rows": len(splits.train), "eval_rows": len(splits.eval), "steps": steps, "seconds": None,
           "basis": None, "reports": [line for r in splits.reports for line in r.lines()]}
    per_step = []
    for name in find_runs(root) if root else []:
        run = RunDir(Path(root) / name)
        metrics = read_metrics(run)
        done, took = metrics.get("train_steps"), metrics.get("train_runtime_s")
        if not run.has_final_model() or not isinstance(done, int) or not isinstance(took, (int, float)) or done < 1:
            continue
        try:
            tree = read_config_tree(run)
        except UserError:
            continue
        train, model = tree.get("train") or {}, tree.get("model") or {}
        if (model.get("name_or_path") == config.model.name_or_path and train.get("batch_size") == config.train.batch_size
                and train.get("max_length") == config.train.max_length):
            per_step.append((took / done, name))
    if per_step:
        per_step.sort()
        seconds, name = per_step[len(per_step) // 2]
        out["seconds"] = round(seconds * steps, 1)
        out["basis"] = f"{seconds:.2f} s/step measured by run {name} (same model, batch size, max_length)"
    return out


# -- processes started from a front end -----------------------------------------------------------------------------
class Jobs:
    """`tunelab train` / `tunelab export` processes started here, each in its own process group (closing the page or
    stopping the server does not stop them). Records in `<root>/.tunelab-ui/jobs/NAME.json`, output in NAME.log."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.dir = self.root / STATE_DIR / "jobs"
        self.procs: dict[str, subprocess.Popen] = {}

    def _record_path(self, name: str) -> Path:
        return self.dir / (name.replace("/", "__") + ".json")

    def _write(self, record: dict) -> None:
        from tunelab.io import atomic_write_json

        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._record_path(record["name"]), record)

    def start(self, name: str, args: list[str], kind: str = "train", **info) -> dict:
        current = self.get(name)
        if current and current.get("alive"):
            raise UserError(f"`{name}` already has a running {current.get('kind', 'training')} process "
                            f"(pid {current['pid']}); stop it first")
        self.dir.mkdir(parents=True, exist_ok=True)
        log_path = self.dir / (name.replace("/", "__") + ".log")
        command = [sys.executable, "-m", "tunelab.cli.main", *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")  # log lines unwrapped
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env, cwd=os.getcwd())
        self.procs[name] = proc
        record = {"name": name, "kind": kind, "pid": proc.pid, "args": args, "started": time.time(),
                  "log": str(log_path), "returncode": None, **info}
        self._write(record)
        return self.get(name)

    def get(self, name: str) -> dict | None:
        record = _read_json(self._record_path(name), None)
        if not isinstance(record, dict):
            return None
        proc = self.procs.get(name)
        if record.get("returncode") is None:
            if proc is not None and proc.pid == record.get("pid"):
                code = proc.poll()
            else:
                code = None if _pid_alive(record.get("pid")) else -1
            if code is not None:
                record.update(returncode=code, ended=time.time(), last_line=_last_line(record.get("log")))
                self._write(record)
        record["alive"] = record.get("returncode") is None
        return record

    def all(self) -> list[dict]:
        if not self.dir.is_dir():
            return []
        names = []
        for path in sorted(self.dir.glob("*.json")):
            record = _read_json(path, None)
            if isinstance(record, dict) and "name" in record:
                names.append(record["name"])
        return [r for r in (self.get(n) for n in names) if r]

    def stop(self, name: str, sig: int = signal.SIGINT) -> dict:
        """A clean interrupt (SIGINT, as Ctrl-C): training finishes its step, saves a checkpoint that `--resume`
        continues, and exits."""
        record = self.get(name)
        if not record or not record.get("alive"):
            raise UserError(f"`{name}` has no running process started from here")
        try:
            os.killpg(record["pid"], sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise UserError(f"not allowed to stop process {record['pid']}") from None
        return record

    def wait(self, name: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.get(name)
            if not record or not record.get("alive"):
                return record
            time.sleep(0.2)
        return self.get(name)


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _last_line(log: str | None) -> str | None:
    if not log:
        return None
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 4096))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def start_training(root: str | Path, jobs: Jobs, config, name: str) -> dict:
    """Write `config` (its output_dir set to `<root>/<name>`) and start `tunelab train` on it in its own process."""
    from tunelab.config import save_config

    name = check_name(name)
    root = Path(root)
    target = root / name
    if target.exists() or (jobs.get(name) or {}).get("alive"):
        raise UserError(f"a run named `{name}` already exists in {root}; choose another name")
    config = config.model_copy(deep=True)
    config.train.output_dir = str(target)
    cfg_dir = root / STATE_DIR / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = cfg_dir / f"{name}.yaml"
    save_config(config, cfg_path)
    return jobs.start(name, ["train", str(cfg_path)], kind="train", task=config.task.name,
                      model=config.model.name_or_path, config=str(cfg_path))


def resume_training(root: str | Path, jobs: Jobs, name: str) -> dict:
    path = run_path(root, name)
    return jobs.start(name, ["train", "--resume", "--output-dir", str(path)], kind="train")


def export_run(root: str | Path, jobs: Jobs, name: str) -> tuple[dict, Path]:
    """Start `tunelab export RUN --offline-bundle <root>/.tunelab-ui/exports/NAME` (merged weights, offline)."""
    path = run_path(root, name)
    if not RunDir(path).has_final_model():
        raise UserError(f"`{name}` has no final model to export (did training finish?)")
    target = Path(root) / STATE_DIR / "exports" / name.replace("/", "__")
    target.parent.mkdir(parents=True, exist_ok=True)
    record = jobs.start(f"{name}.export", ["export", str(path), "--offline-bundle", str(target), "--overwrite"],
                        kind="export", run=name, target=str(target))
    return record, target
