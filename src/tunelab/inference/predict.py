"""A task's model over rows of data: generated text for generative tasks, probabilities for probabilistic ones.

The task supplies prompts, references, probabilities and scores (tasks/base.py); this module runs the
model and puts the pieces together, so training, evaluation, the CLI and any other front end predict
and score the same way.
"""
from __future__ import annotations

import pandas as pd

from tunelab.config.schema import GenerationConfig
from tunelab.inference.engine import GenerationEngine, GenerationStats
from tunelab.tasks.base import GenerativeTask, ProbabilisticTask, Task, require_capability


def generate_rows(task: GenerativeTask, model, tokenizer, frame: pd.DataFrame,
                  generation: GenerationConfig | None = None) -> tuple[pd.DataFrame, GenerationStats]:
    """One generated text per row: columns prompt, prediction (+ references when the rows have them)."""
    engine = GenerationEngine(model, tokenizer, generation or task.config.generation)
    prompts = [task.generation_prompt(row, tokenizer) for _, row in frame.iterrows()]
    result = pd.DataFrame({"prompt": prompts, "prediction": engine.generate(prompts)}, index=frame.index)
    if task.has_labels(frame):
        result["references"] = [task.references(row) for _, row in frame.iterrows()]
    return result, engine.stats


def predict_rows(task: Task, model, tokenizer, frame: pd.DataFrame,
                 generation: GenerationConfig | None = None) -> pd.DataFrame:
    """The task's predictions for every row of `frame`, ready for `task.write_predictions`."""
    if isinstance(task, ProbabilisticTask):
        return task.predictions_frame(frame, task.predict_proba(model, tokenizer, frame))
    return generate_rows(require_capability(task, GenerativeTask, "prediction"), model, tokenizer, frame, generation)[0]


def evaluate_rows(task: Task, model, tokenizer, frame: pd.DataFrame, generation: GenerationConfig | None = None,
                  max_rows: int | None = None) -> tuple[dict, pd.DataFrame | None]:
    """Task metrics from real predictions on labelled rows, and the per-row predictions (with scores).

    Generative tasks generate for at most `max_rows` rows (default: the task's `eval_generation_rows()`;
    0 means no generation, so no metrics and no predictions)."""
    if frame.empty or not task.has_labels(frame):
        return {}, None
    if isinstance(task, ProbabilisticTask):
        probs = task.predict_proba(model, tokenizer, frame)
        return task.score_probabilities(frame, probs), task.predictions_frame(frame, probs)
    task = require_capability(task, GenerativeTask, "evaluation")
    limit = task.eval_generation_rows() if max_rows is None else max_rows
    if limit == 0:
        return {}, None
    frame = frame.iloc[:limit] if limit else frame
    predictions, stats = generate_rows(task, model, tokenizer, frame, generation)
    metrics = task.score_predictions(predictions)
    metrics.update(generated_rows=len(frame), generation_tokens_per_second=round(stats.tokens_per_second, 2))
    return metrics, predictions
