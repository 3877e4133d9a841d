"""The quickstart: the whole loop on the embedded model and data, offline, in a few minutes on a CPU.

LoRA-tunes SmolLM2-135M-Instruct on the shipped English instruction/QA sample and measures the gain two
ways on the run's own held-out rows: eval loss before/after, and ROUGE-L of generated answers against the
reference answers before/after (so the gain is a number, not a feeling).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

QUICKSTART = {
    "task": {"name": "sft", "format": "conversational"},
    "model": {"name_or_path": "smollm2-135m-instruct"},
    "data": {"eval_fraction": 0.1, "stratify_by": None, "seed": 7},
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
    "train": {"preset": "fast", "epochs": 1, "learning_rate": 4e-4, "batch_size": 8, "max_length": 384,
              "logging_steps": 5},
    "generation": {"max_new_tokens": 80, "do_sample": False, "repetition_penalty": 1.1},
}


def quickstart_config(output_dir: str | None = None, overrides: dict | None = None):
    from tunelab.config import build_config
    from tunelab.resources import resource_path

    raw = {k: dict(v) for k, v in QUICKSTART.items()}
    raw["data"]["train_path"] = str(resource_path("qa_en_instructions.csv"))
    if output_dir:
        raw["train"]["output_dir"] = output_dir
    return build_config(raw, overrides, source="quickstart")


@dataclass
class QuickstartResult:
    run_dir: Path
    metrics: dict
    answers: pd.DataFrame   # every held-out row: question, reference, before, after, rougeL_before/after
    rouge_l: tuple[float, float]  # mean ROUGE-L of the answers (before, after)


def run_quickstart(output_dir: str | None = None, overrides: dict | None = None,
                   echo: Callable[[str], None] = print) -> QuickstartResult:
    """Answer the held-out questions, train, answer them again; scores and answers land in the run dir."""
    from tunelab.api import held_out_rows, load, load_base
    from tunelab.data.pipeline import load_splits
    from tunelab.io import atomic_path
    from tunelab.metrics.rouge import RougeMetric
    from tunelab.training.recipe import train

    config = quickstart_config(output_dir, overrides)
    base = load_base(config.model.name_or_path, config=config)
    # The held-out rows the recipe will evaluate on: the same pipeline (cleaning, split, length check).
    held_out = load_splits(config, base.task, base.tokenizer).eval
    echo(f"answering {len(held_out)} held-out questions before training ...")
    before = base.predict(held_out)["prediction"].tolist()
    del base

    result = train(config, echo=echo)
    trained = load(result.run_dir)
    if not held_out.index.equals(held_out_rows(trained).index):
        raise AssertionError("the quickstart's held-out rows are not the ones the run evaluated on")
    after = trained.predict(held_out)["prediction"].tolist()

    metric = RougeMetric("char", rouge_types=("rougeL",))
    references = held_out["answer"].astype(str).tolist()
    scores = {name: [s["rougeL"] for s in metric.score_each(texts, references)]
              for name, texts in (("before", before), ("after", after))}
    answers = pd.DataFrame({"question": held_out["question"].tolist(), "reference": references,
                            "before": before, "after": after,
                            "rougeL_before": scores["before"], "rougeL_after": scores["after"]})
    with atomic_path(result.run_dir / "quickstart_samples.csv") as tmp:
        answers.to_csv(tmp, index=False)
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    return QuickstartResult(result.run_dir, result.metrics, answers, (mean(scores["before"]), mean(scores["after"])))
