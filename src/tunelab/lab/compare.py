"""The same prompts through several models, side by side: answers, lengths, speed, and how likely each model
finds a reference answer (mean log-likelihood per reference token).

How each model is prompted is said, not hidden: a run is prompted exactly as it was trained (its task's
generation prompt: chat template, system prompt per category, or prompt template); a model with a chat
template gets the prompt as one user turn; a base model without one gets the raw text.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tunelab.errors import UserError

PROMPT_COLUMNS = ("prompt", "question", "dialogue", "text")
"""The prompts file's prompt column: the first of these it has."""
REFERENCE_COLUMNS = ("reference", "answer", "summary")
"""The reference-answer column, when the file has one: scored by log-likelihood under each model."""
EXTRA_COLUMNS = ("category", "system")
"""Passed on to a run's task (a run trained with per-category system prompts uses them)."""


@dataclass
class ComparedModel:
    name: str                # the CSV column
    source: str              # what the user named: alias, folder or run directory
    prompting: str           # how its prompts were built, in words
    answers: list[str] = field(default_factory=list)
    answer_tokens: list[int] = field(default_factory=list)
    tokens_per_second: float = 0.0
    reference_loglik: list[float] | None = None

    @property
    def mean_reference_loglik(self) -> float | None:
        if not self.reference_loglik:
            return None
        return sum(self.reference_loglik) / len(self.reference_loglik)


@dataclass
class Comparison:
    prompts: pd.DataFrame    # the prompt rows as read (prompt column first)
    prompt_column: str
    reference_column: str | None
    models: list[ComparedModel]

    def frame(self) -> pd.DataFrame:
        """One row per prompt: the prompt, the reference, then per model its answer, length, tokens/s, log-lik."""
        out = pd.DataFrame({"prompt": self.prompts[self.prompt_column].tolist()})
        if self.reference_column:
            out["reference"] = self.prompts[self.reference_column].tolist()
        for m in self.models:
            out[m.name] = m.answers
            out[f"{m.name} tokens"] = m.answer_tokens
            out[f"{m.name} tokens/s"] = round(m.tokens_per_second, 2)
            if m.reference_loglik is not None:
                out[f"{m.name} reference loglik"] = [round(v, 4) for v in m.reference_loglik]
        return out


def read_prompts(path: str | Path | None = None, prompt: str | None = None) -> tuple[pd.DataFrame, str, str | None]:
    """(rows, prompt column, reference column or None) from `--prompts FILE` or `--prompt TEXT`."""
    if (path is None) == (prompt is None):
        raise UserError("give the prompts with --prompts FILE or --prompt TEXT (one of them)")
    if prompt is not None:
        if not prompt.strip():
            raise UserError("--prompt is empty")
        return pd.DataFrame({"prompt": [prompt]}), "prompt", None
    from tunelab.data.readers import read_table

    frame = read_table(path)
    column = next((c for c in PROMPT_COLUMNS if c in frame.columns), None)
    if column is None:
        raise UserError(f"{path}: no prompt column; name one of {', '.join(PROMPT_COLUMNS)} "
                        f"(columns: {', '.join(map(str, frame.columns))})")
    frame = frame[frame[column].map(lambda v: isinstance(v, str) and bool(v.strip()))].reset_index(drop=True)
    if frame.empty:
        raise UserError(f"{path}: the `{column}` column has no text")
    reference = next((c for c in REFERENCE_COLUMNS if c in frame.columns), None)
    if reference is not None:
        frame[reference] = frame[reference].map(lambda v: v if isinstance(v, str) else "")
    return frame, column, reference


def parse_model_list(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise UserError("--models names no model; e.g. --models smollm2-135m-instruct,runs/my-run")
    return models


def compare_models(models: list[str], prompts: pd.DataFrame, prompt_column: str = "prompt",
                   reference_column: str | None = None, max_new_tokens: int = 64, sample: bool = False,
                   seed: int = 0, temperature: float = 0.7, top_p: float = 0.9, batch_size: int = 8,
                   device: str | None = None) -> Comparison:
    """Each model in turn (one in memory at a time) answers every prompt; greedy, or sampled with `seed`."""
    from tunelab.config.schema import GenerationConfig

    generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature,
                                  top_p=top_p, batch_size=batch_size)
    names = _column_names(models)
    compared = []
    for name, source in zip(names, models):
        compared.append(_run_model(name, source, prompts, prompt_column, reference_column, generation, seed, device))
        gc.collect()
    return Comparison(prompts, prompt_column, reference_column, compared)


def _column_names(models: list[str]) -> list[str]:
    """A short, unique column name per model: the alias, or the run/folder name."""
    names: list[str] = []
    for source in models:
        path = Path(source)
        base = path.name if path.exists() else source
        if base == "final" and path.exists():  # a run's final/ folder: the run's name says more
            base = path.parent.name
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _run_model(name, source, prompts, prompt_column, reference_column, generation, seed, device) -> ComparedModel:
    from transformers import set_seed

    from tunelab.api import load_target
    from tunelab.inference.engine import GenerationEngine
    from tunelab.tasks.base import GenerativeTask

    loaded = load_target(source, device=device, capability=GenerativeTask, action=f"comparing generations ({source})")
    tokenizer = loaded.tokenizer
    texts, prompting = _prompt_texts(loaded, prompts, prompt_column)
    engine = GenerationEngine(loaded.model, tokenizer, generation)
    set_seed(seed)  # the same seed for every model: sampled answers differ by the model, not the draw
    answers = engine.generate(texts)
    result = ComparedModel(name=name, source=source, prompting=prompting, answers=answers,
                           answer_tokens=[len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]],
                           tokens_per_second=engine.stats.tokens_per_second)
    if reference_column:
        result.reference_loglik = [reference_loglik(loaded.model, tokenizer, t, r)
                                   for t, r in zip(texts, prompts[reference_column])]
    del loaded, engine
    return result


def _prompt_texts(loaded, prompts: pd.DataFrame, prompt_column: str) -> tuple[list[str], str]:
    """The text each prompt becomes for this model, and how that was decided."""
    tokenizer = loaded.tokenizer
    if loaded.run_dir is not None:  # a run: exactly the prompt its task generates from after training
        task = loaded.task
        texts = [task.generation_prompt(_task_row(row, prompt_column), tokenizer) for _, row in prompts.iterrows()]
        fmt = getattr(task.options, "format", None)
        how = f"the run's own prompt (task {task.name}{', ' + fmt if fmt else ''}"
        return texts, how + (", chat template)" if fmt in (None, "conversational", "chat") and tokenizer.chat_template
                             else ")")
    if tokenizer.chat_template:
        texts = []
        for _, row in prompts.iterrows():
            messages = [{"role": "user", "content": str(row[prompt_column])}]
            system = row.get("system")
            if isinstance(system, str) and system.strip():
                messages.insert(0, {"role": "system", "content": system})
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return texts, "chat template (the prompt as one user turn)"
    return [str(p) for p in prompts[prompt_column]], "raw prompt (no chat template: a base model continues the text)"


def _task_row(row: pd.Series, prompt_column: str) -> pd.Series:
    """The prompt row as a run's task reads it: the prompt under the task's input field names."""
    text = str(row[prompt_column])
    values = {"question": text, "dialogue": text}
    values.update({c: row[c] for c in EXTRA_COLUMNS if c in row.index and isinstance(row[c], str)})
    return pd.Series(values, name=row.name)


def reference_loglik(model, tokenizer, prompt_text: str, reference: str) -> float:
    """Mean log-probability per token of `reference` following `prompt_text` (higher = the model finds the
    answer more likely). Prompt and reference are tokenized apart, so the reference's tokens are the same for
    every prompt format. NaN for an empty reference."""
    import torch

    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(reference, add_special_tokens=False)["input_ids"] if reference else []
    if not answer_ids:
        return math.nan
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + answer_ids], device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1: -1].float()
    scores = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(answer_ids, device=device)[:, None])
    return float(scores.mean())


def write_csv(comparison: Comparison, path: str | Path) -> Path:
    from tunelab.io import atomic_path

    with atomic_path(path) as tmp:
        comparison.frame().to_csv(tmp, index=False)
    return Path(path)
