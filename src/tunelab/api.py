"""The public Python API: train a run, load it back, predict with it.

    import tunelab
    result = tunelab.train(tunelab.load_config("examples/qa_quickstart.yaml"))
    run = tunelab.load(result.run_dir)
    answers = run.predict("new_questions.csv")
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunelab.config import RunConfig, build_config, load_config
from tunelab.errors import UserError
from tunelab.models import Hardware, detect_hardware, load_model, load_tokenizer
from tunelab.tasks import get_task
from tunelab.tasks.base import Task
from tunelab.training.rundir import RunDir


@dataclass
class LoadedRun:
    config: RunConfig
    task: Task
    model: Any
    tokenizer: Any
    hardware: Hardware
    run_dir: Path

    def read(self, data_path: str | Path) -> pd.DataFrame:
        """Read a file the way this run's task expects it (column mapping and task preparation)."""
        from tunelab.data.pipeline import load_frame

        return load_frame(str(data_path), self.config, self.task, "predict")

    def predict(self, data: str | Path | pd.DataFrame) -> pd.DataFrame:
        frame = data if isinstance(data, pd.DataFrame) else self.read(data)
        return self.task.predict(self.model, self.tokenizer, frame)


def load(run_dir: str | Path, device: str | None = None) -> LoadedRun:
    """Load a finished run (or an exported bundle) for inference: config, task state, model, tokenizer."""
    run = RunDir(Path(run_dir))
    if not run.config.exists():
        raise UserError(f"{run.path} is not a tunelab run (no config.yaml)")
    if not (run.final / "config.json").exists() and not (run.final / "adapter_config.json").exists():
        raise UserError(f"{run.path} has no trained model in final/ (did training finish? `tunelab train ... --resume`)")
    config = load_config(run.config)
    if device:
        config.model.device = device
    task = get_task(config.task.name)(config)
    if run.task_state.exists():
        task.load_state(json.loads(run.task_state.read_text(encoding="utf-8")))
    hardware = detect_hardware(config.model)
    tokenizer_cfg = config.model.model_copy(update={"name_or_path": str(run.final)})
    tokenizer = load_tokenizer(tokenizer_cfg)
    if (run.final / "adapter_config.json").exists():
        from peft import PeftModel

        base = load_model(config.model, task.head, hardware, task.head_kwargs(), tokenizer=tokenizer, for_training=False)
        model = PeftModel.from_pretrained(base, str(run.final))
        model = model.merge_and_unload() if not (config.model.load_in_4bit or config.model.load_in_8bit) else model
    else:
        model = load_model(tokenizer_cfg, task.head, hardware, task.head_kwargs(), tokenizer=tokenizer, for_training=False)
    model.eval()
    return LoadedRun(config=config, task=task, model=model, tokenizer=tokenizer, hardware=hardware, run_dir=run.path)


def load_base(model: str, task: str = "sft", config: RunConfig | None = None, device: str | None = None) -> LoadedRun:
    """An untrained model wrapped like a run: for before/after comparisons and plain chat."""
    config = config or build_config({"task": task, "model": {"name_or_path": model}})
    if device:
        config.model.device = device
    task_obj = get_task(config.task.name)(config)
    hardware = detect_hardware(config.model)
    tokenizer = load_tokenizer(config.model)
    m = load_model(config.model, task_obj.head, hardware, task_obj.head_kwargs(), tokenizer=tokenizer, for_training=False)
    m.eval()
    return LoadedRun(config=config, task=task_obj, model=m, tokenizer=tokenizer, hardware=hardware, run_dir=Path("."))
