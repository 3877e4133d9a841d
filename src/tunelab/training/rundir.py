"""The run directory: one folder per run holding everything needed to inspect, resume and reuse it.

    config.yaml        resolved config (what actually ran)
    task_state.json    what the task learned from data (labels, ...)
    eval_rows.json     which data rows were held out (source file + 1-based row numbers)
    data_report.json   data-quality report per input file
    history.jsonl      one JSON object per logging/eval step
    metrics.json       final metrics, flat
    eval_predictions.jsonl  the final model's predictions on the held-out rows, with per-row scores
    plots/loss.png     train/eval loss curves
    checkpoints/       Trainer checkpoints (resumable)
    final/             the trained adapter or full model + tokenizer
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tunelab.errors import UserError


@dataclass(frozen=True)
class RunDir:
    path: Path

    config = property(lambda self: self.path / "config.yaml")
    task_state = property(lambda self: self.path / "task_state.json")
    eval_rows = property(lambda self: self.path / "eval_rows.json")
    data_report = property(lambda self: self.path / "data_report.json")
    history = property(lambda self: self.path / "history.jsonl")
    metrics = property(lambda self: self.path / "metrics.json")
    eval_predictions = property(lambda self: self.path / "eval_predictions.jsonl")
    plots = property(lambda self: self.path / "plots")
    checkpoints = property(lambda self: self.path / "checkpoints")
    final = property(lambda self: self.path / "final")

    @staticmethod
    def default_path(task_name: str) -> Path:
        return Path("runs") / f"{task_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"

    @classmethod
    def prepare(cls, path: str | Path, resume: bool, overwrite: bool) -> "RunDir":
        """Create the folder; refuse to silently reuse one that holds a run."""
        run = cls(Path(path))
        has_run = run.config.exists() or run.checkpoints.exists()
        if resume:
            if not run.checkpoints.exists() or not any(run.checkpoints.glob("checkpoint-*")):
                raise UserError(f"--resume: no checkpoint in {run.checkpoints}; start the run without --resume")
        elif has_run:
            if not overwrite:
                raise UserError(f"{run.path} already holds a run; use --resume to continue it, "
                                "--overwrite to replace it, or another --output-dir")
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    def last_checkpoint_step(self) -> int | None:
        steps = [int(p.name.split("-")[1]) for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
        return max(steps) if steps else None

    def read_eval_rows(self) -> dict | None:
        """{"source": file, "rows": [1-based row numbers]} of the held-out split, or None (older runs)."""
        return json.loads(self.eval_rows.read_text(encoding="utf-8")) if self.eval_rows.exists() else None

    def read_metrics(self) -> dict:
        return json.loads(self.metrics.read_text()) if self.metrics.exists() else {}

    def read_history(self) -> list[dict]:
        if not self.history.exists():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines() if line.strip()]
