"""Evaluate a generation task from real generations: a trained run, or a base model with no training.

    from tunelab.evaluation import evaluate_generation
    before = evaluate_generation("dialogsum.test.jsonl", model="smollm2-135m-instruct", task="summarize")
    after = evaluate_generation("dialogsum.test.jsonl", run_dir="runs/summarize-...")

Both write `predictions.jsonl` (one row per example: prediction, references,
per-row scores) and `eval_metrics.json` (the task's metrics, e.g. ROUGE, plus
generation speed and what was evaluated), atomically.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from tunelab.config.schema import GenerationConfig, RunConfig
from tunelab.errors import UserError
from tunelab.io import atomic_write_json
from tunelab.tasks.base import GenerativeTask, require_capability


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    output_dir: Path
    predictions_path: Path
    metrics_path: Path


def evaluate_generation(data: str | Path, run_dir: str | Path | None = None, *, model: str | None = None,
                        task: str | None = None, config: str | Path | RunConfig | None = None,
                        output_dir: str | Path | None = None, max_rows: int | None = None,
                        generation: dict[str, Any] | None = None, device: str | None = None,
                        echo: Callable[[str], None] = print, trust_remote_code: bool = False,
                        overwrite: bool = False) -> EvalResult:
    """Generate for every row of `data` and score against its references.

    Give `run_dir` (a finished run) or `model` (alias/folder, evaluated untrained with `task`'s prompts,
    optionally with a `config` for prompt format, column mapping and generation settings).
    `generation` overrides generation settings (max_new_tokens, temperature, top_p, repetition_penalty,
    do_sample, batch_size).
    """
    loaded = _load(run_dir, model, task, config, device, trust_remote_code)
    task_obj, cfg = loaded.task, loaded.config
    out = Path(output_dir) if output_dir else _default_output_dir(run_dir, cfg.model.name_or_path, data)
    existing = [p for p in (out / "predictions.jsonl", out / "eval_metrics.json") if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} exists from an earlier evaluation; pass --overwrite to replace it, "
                        "or choose another --output-dir")
    require_capability(task_obj, GenerativeTask, "`tunelab eval` (it scores generated text)")
    gen = _generation_config(cfg.generation, generation or {})

    from tunelab.data.pipeline import load_labelled
    from tunelab.inference.predict import generate_rows

    frame, _ = load_labelled(str(data), cfg, task_obj, "eval")
    if max_rows:
        frame = frame.iloc[:max_rows]
    echo(f"evaluating {'run ' + str(run_dir) if run_dir else 'base model ' + cfg.model.name_or_path} on {len(frame)} rows "
         f"of {data} ({loaded.hardware.describe()})")
    predictions, stats = generate_rows(task_obj, loaded.model, loaded.tokenizer, frame, gen)
    scores = task_obj.score_predictions(predictions)
    predictions.insert(0, "row", [int(i) + 1 for i in frame.index])

    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {k: round(float(v), 4) for k, v in scores.items()}
    metrics.update({
        "rows": len(frame),
        "generated_tokens": stats.new_tokens,
        "generation_seconds": round(stats.seconds, 2),
        "generation_tokens_per_second": round(stats.tokens_per_second, 2),
        "task": task_obj.name,
        "model": cfg.model.name_or_path,
        "run_dir": str(run_dir) if run_dir else None,
        "data": str(data),
        "generation": gen.model_dump(),
    })
    predictions_path = task_obj.write_predictions(predictions, out / "predictions.jsonl")
    metrics_path = out / "eval_metrics.json"
    atomic_write_json(metrics_path, metrics)
    return EvalResult(metrics=metrics, output_dir=out, predictions_path=Path(predictions_path), metrics_path=metrics_path)


def _load(run_dir, model, task, config, device, trust_remote_code=False):
    from tunelab import api

    if run_dir is not None:
        if model or config:
            raise UserError("give a run directory or --model/--config (a base model), not both")
        loaded = api.load(run_dir, device=device, trust_remote_code=trust_remote_code)
        if task and task != loaded.config.task.name:
            raise UserError(f"{run_dir} is a `{loaded.config.task.name}` run, not `{task}`")
        return loaded
    if not model and not config:
        raise UserError("nothing to evaluate: give a run directory, or --model (optionally --config) for a base model")
    cfg = _base_config(model, task, config)
    return api.load_base(cfg.model.name_or_path, config=cfg, device=device)


def _base_config(model: str | None, task: str | None, config) -> RunConfig:
    from tunelab.config import build_config, load_config

    if config is None:
        return build_config({"task": task or "summarize", "model": {"name_or_path": model}})
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    if task and task != cfg.task.name:
        raise UserError(f"--task {task} does not match the config's task `{cfg.task.name}`")
    if model:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name_or_path": model})})
    return cfg


def _generation_config(base: GenerationConfig, overrides: dict[str, Any]) -> GenerationConfig:
    merged = base.model_dump()
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GenerationConfig.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"generation setting `{'.'.join(map(str, err['loc']))}`: {err['msg']}") from None


def _default_output_dir(run_dir, model: str, data) -> Path:
    stem = Path(str(data)).name.split(".")[0] or "data"
    if run_dir:
        return Path(run_dir) / "eval" / stem
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-") or "model"
    return Path("runs") / "eval" / slug / stem
