"""Generation metrics during training: summaries for a fixed eval sample, scored at every evaluation.

How the numbers reach the Trainer (checked against transformers 5.x `Trainer.evaluate`):
`evaluate()` logs its metrics (`self.log` -> `on_log` -> history.jsonl), *then*
calls `on_evaluate(args, state, control, metrics=...)` with the same dict it
returns. `_maybe_log_save_evaluate` passes that returned dict to
`_determine_best_metric`, so keys added here in `on_evaluate` are what
`metric_for_best_model="rougeL"` (-> `eval_rougeL`) selects the best
checkpoint by. Because the log already happened, `TunelabTrainer.evaluate`
logs the keys callbacks added (one extra log record at the same step), which
puts them in history.jsonl and `trainer_state.json`.

Every evaluation carries ROUGE while this callback is active (a missing
`eval_rougeL` would make best-checkpoint selection fail), and the callback also
asks for an evaluation and a checkpoint every `every` steps, so the best
ROUGE step is a saved one. Set `train.eval_steps` to the same N for one schedule.
"""
from __future__ import annotations

import pandas as pd
from transformers import TrainerCallback

from tunelab.inference.predict import generate_rows


class GenerationEvalCallback(TrainerCallback):
    """Generate for `frame` (inference.predict.generate_rows), score with `task.score_predictions`, and add
    `<prefix>_<metric>` to the eval metrics."""

    def __init__(self, task, tokenizer, frame: pd.DataFrame, every: int):
        self.task = task
        self.tokenizer = tokenizer
        self.frame = frame
        self.every = every
        self.last: dict[str, float] = {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            control.should_evaluate = True
            if args.save_strategy != "no":
                control.should_save = True
        return control

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if model is None or metrics is None or self.frame.empty:
            return control
        was_training = model.training
        try:
            predictions, stats = generate_rows(self.task, model, self.tokenizer, self.frame)
        finally:
            model.train(was_training)
        scores = self.task.score_predictions(predictions)
        prefix = metric_prefix(metrics)
        self.last = {f"{prefix}_{k}": round(v, 4) for k, v in scores.items()}
        self.last[f"{prefix}_generation_tokens_per_second"] = round(stats.tokens_per_second, 2)
        metrics.update(self.last)
        return control


def metric_prefix(metrics: dict) -> str:
    """The Trainer's key prefix for this evaluation: `eval`, or e.g. `eval_before` (from `<prefix>_loss`)."""
    for key in metrics:
        if key.endswith("_loss"):
            return key[: -len("_loss")]
    return "eval"
