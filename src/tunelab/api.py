"""The public Python API: the one surface the CLI (and any other front end) calls.

    import tunelab
    result = tunelab.train(tunelab.load_config("examples/qa_en.yaml"))
    run = tunelab.load(result.run_dir)
    answers = run.predict("new_questions.csv")
    metrics = run.evaluate()                      # on the run's own held-out rows

Also here: `load_base` (an untrained model wrapped like a run), `held_out_rows`, `ensemble`,
`export_bundle` and `run_test_mode` (the SPEC's test mode).
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tunelab.config import RunConfig, build_config, load_config, save_config
from tunelab.errors import UserError
from tunelab.tasks import get_task
from tunelab.tasks.base import (
    GenerativeTask, ProbabilisticTask, SequenceClassificationTask, Task, require_capability,
)
from tunelab.training.rundir import RunDir

if TYPE_CHECKING:
    from tunelab.models import Hardware
    from tunelab.training.recipe import RunResult, train

# torch, transformers and the training stack load on first use (`train`, `RunResult` below; models inside
# the functions), so commands that only read files (`submission check`, `data stats`) start fast.
_LAZY = {"train": "tunelab.training.recipe", "RunResult": "tunelab.training.recipe"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups (and monkeypatching) see a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["train", "RunResult", "load", "load_task", "load_base", "load_target", "LoadedRun", "held_out_rows", "ensemble",
           "normalise_weights", "check_prediction_output", "export_bundle", "check_submission_file", "run_test_mode", "TestReport"]

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    config: RunConfig
    task: Task
    model: Any
    tokenizer: Any
    hardware: "Hardware"
    run_dir: Path | None

    def read(self, data_path: str | Path) -> pd.DataFrame:
        """Read a file the way this run's task expects it (column mapping and task preparation)."""
        from tunelab.data.pipeline import load_frame

        return load_frame(str(data_path), self.config, self.task, "predict")

    def predict(self, data: str | Path | pd.DataFrame) -> pd.DataFrame:
        """The task's predictions for every row (generated text, or class probabilities and top labels)."""
        from tunelab.inference.predict import predict_rows

        frame = data if isinstance(data, pd.DataFrame) else self.read(data)
        return predict_rows(self.task, self.model, self.tokenizer, frame)

    def predict_proba(self, data: str | Path | pd.DataFrame):
        """(rows, classes) probabilities, columns in `task.classes` order (probabilistic tasks)."""
        task = require_capability(self.task, ProbabilisticTask, "predicting probabilities")
        frame = data if isinstance(data, pd.DataFrame) else self.read(data)
        return task.predict_proba(self.model, self.tokenizer, frame)

    def evaluate(self, data: str | Path | pd.DataFrame | None = None, max_rows: int | None = None) -> dict:
        """Task metrics from real predictions: on labelled `data`, or on the run's own held-out rows."""
        from tunelab.inference.predict import evaluate_rows

        if data is None:
            frame = held_out_rows(self)
        elif isinstance(data, pd.DataFrame):
            frame = data
        else:
            from tunelab.data.pipeline import load_labelled

            frame = load_labelled(str(data), self.config, self.task, "eval")[0]
        return evaluate_rows(self.task, self.model, self.tokenizer, frame, max_rows=max_rows)[0]


def load_task(run_dir: str | Path) -> tuple[RunConfig, Task]:
    """A run's (or bundle's) config and its task with the state learned in training; no model is loaded."""
    run = RunDir(Path(run_dir))
    if not run.config.exists():
        raise UserError(f"{run.path} is not a tunelab run (no config.yaml)")
    config = load_config(run.config)
    if "pooling" not in config.model.model_fields_set:
        config.model.pooling = "native"  # a run saved before `model.pooling` existed read the model's own head
    task = get_task(config.task.name)(config)
    if run.task_state.exists():
        task.load_state(json.loads(run.task_state.read_text(encoding="utf-8")))
    return config, task


def load(run_dir: str | Path, device: str | None = None, trust_remote_code: bool = False,
         capability: type[Task] | None = None, action: str | None = None, dtype: str | None = None) -> LoadedRun:
    """Load a finished run (or an exported bundle) for inference: config, task state, model, tokenizer.

    A LoRA adapter is merged into an fp32 copy of the base, then the model is cast to the run's
    `model.predict_dtype` (or `dtype`: "float32" for exports, which must not round the merged weights).
    The run's own config can never turn on remote code: only `trust_remote_code`.
    With `capability`, a task without it is a UserError (naming `action`) before any weights are read.
    """
    import torch

    from tunelab.models import detect_hardware, load_model, load_tokenizer
    from tunelab.models.loading import predict_dtype

    run = RunDir(Path(run_dir))
    config, task = load_task(run.path)
    if capability is not None:
        require_capability(task, capability, action or "this command")  # before any weights are read
    if not (run.final / "config.json").exists() and not (run.final / "adapter_config.json").exists():
        raise UserError(f"{run.path} has no trained model in final/ (did training finish? `tunelab train ... --resume`)")
    if config.model.trust_remote_code and not trust_remote_code:
        log.warning("%s asks for trust_remote_code; ignored (pass --trust-remote-code if you trust its code)", run.config)
    config.model.trust_remote_code = trust_remote_code
    if device:
        config.model.device = device
    hardware = detect_hardware(config.model)
    final_cfg = config.model.model_copy(update={"name_or_path": str(run.final)})
    tokenizer = load_tokenizer(final_cfg)
    if dtype:
        config.model.predict_dtype = dtype
    elif _bf16_from_another_cpu(config, hardware):
        log.warning("%s predicts in bfloat16, chosen on the CPU it trained on; this CPU has no fast bf16 (it would be "
                    "emulated, many times slower), so it predicts in float32 (dtype='bfloat16' / --set "
                    "model.predict_dtype=bfloat16 keeps bf16)", run.path)
        config.model.predict_dtype = "float32"
    dtype = predict_dtype(config.model, hardware)
    if (run.final / "adapter_config.json").exists():
        from peft import PeftModel

        quantized = config.model.load_in_4bit or config.model.load_in_8bit
        base = load_model(config.model, task.head, hardware, task.head_kwargs(), tokenizer=tokenizer,
                          for_training=False, dtype=None if quantized else torch.float32, head_restored_later=True)
        model = PeftModel.from_pretrained(base, str(run.final))
        if not quantized:  # merge in fp32: merging into a bf16 base rounds the update away
            model = model.merge_and_unload().to(dtype)
    else:
        model = load_model(final_cfg, task.head, hardware, task.head_kwargs(), tokenizer=tokenizer,
                           for_training=False, dtype=dtype)
    model.eval()
    return LoadedRun(config=config, task=task, model=model, tokenizer=tokenizer, hardware=hardware, run_dir=run.path)


def _bf16_from_another_cpu(config: RunConfig, hardware) -> bool:
    """A run saved `predict_dtype: bfloat16` (the automatic choice for generation on a fast-bf16 CPU, or the user's)
    and is loaded on a CPU without fast bf16 (AVX2 only), where bf16 is emulated: a machine-dependent default."""
    from tunelab.models.hardware import cpu_has_fast_bf16

    return config.model.predict_dtype == "bfloat16" and hardware.device == "cpu" and not cpu_has_fast_bf16()


def load_base(model: str, task: str = "sft", config: RunConfig | None = None, device: str | None = None,
              dtype: str | None = None) -> LoadedRun:
    """An untrained model wrapped like a run: for before/after comparisons and plain chat."""
    from tunelab.models import detect_hardware, load_model, load_tokenizer
    from tunelab.models.loading import predict_dtype

    config = config or build_config({"task": task, "model": {"name_or_path": model}})
    if device:
        config.model.device = device
    if dtype:
        config.model.predict_dtype = dtype
    task_obj = get_task(config.task.name)(config)
    hardware = detect_hardware(config.model)
    tokenizer = load_tokenizer(config.model)
    m = load_model(config.model, task_obj.head, hardware, task_obj.head_kwargs(), tokenizer=tokenizer,
                   for_training=False, dtype=predict_dtype(config.model, hardware, isinstance(task_obj, GenerativeTask)))
    m.eval()
    return LoadedRun(config=config, task=task_obj, model=m, tokenizer=tokenizer, hardware=hardware, run_dir=None)


def load_target(target: str | Path, device: str | None = None, trust_remote_code: bool = False,
                capability: type[Task] | None = None, action: str | None = None, dtype: str | None = None) -> LoadedRun:
    """A run directory (it holds config.yaml) or else a model alias/folder, untrained."""
    if (Path(target) / "config.yaml").exists():
        return load(target, device=device, trust_remote_code=trust_remote_code, capability=capability, action=action,
                    dtype=dtype)
    return load_base(str(target), device=device, dtype=dtype)


def held_out_rows(run: LoadedRun | str | Path) -> pd.DataFrame:
    """The run's held-out rows, exactly those training evaluated on (eval_rows.json), labels included."""
    from tunelab.data.pipeline import load_frame

    loaded = run if isinstance(run, LoadedRun) else None
    run_dir = RunDir(Path(loaded.run_dir if loaded else run))
    saved = run_dir.read_eval_rows()
    if saved is None:
        raise UserError(f"{run_dir.path} records no held-out rows (eval_rows.json): it was trained before tunelab "
                        "saved its split, or with data.eval_fraction 0 and no eval_path")
    if not saved["rows"]:
        raise UserError(f"{run_dir.path}: the run has no held-out rows (data.eval_fraction was 0 and no eval_path)")
    config, task = (loaded.config, loaded.task) if loaded else load_task(run_dir.path)
    frame = load_frame(saved["source"], config, task, "eval")
    positions = [r - 1 for r in saved["rows"]]
    if max(positions) >= len(frame):
        raise UserError(f"{saved['source']} has {len(frame)} rows but the run held out row {max(positions) + 1}: "
                        "the file changed since training")
    return frame.iloc[positions]


def ensemble(run_dirs: list[str | Path], data: str | Path, weights: list[float] | None = None,
             device: str | None = None, trust_remote_code: bool = False) -> tuple[ProbabilisticTask, pd.DataFrame, Any]:
    """Weighted average of several runs' class probabilities on `data`, aligned by class name.

    Returns (first run's task, its prepared frame, averaged probabilities in that task's class order)."""
    import gc

    import numpy as np

    if len(run_dirs) < 2:
        raise UserError("an ensemble needs at least two runs")
    weights = normalise_weights(weights, len(run_dirs))
    first_task, first_frame, total = None, None, None
    for run_dir, weight in zip(run_dirs, weights):
        task, frame, probs = _member_probabilities(run_dir, data, device, trust_remote_code)
        if first_task is None:
            first_task, first_frame, total = task, frame, np.zeros_like(probs)
        else:
            if task.name != first_task.name:
                raise UserError(f"{run_dir}: task `{task.name}` differs from the first run's `{first_task.name}`")
            if set(task.classes) != set(first_task.classes):
                extra = sorted(set(task.classes) ^ set(first_task.classes))
                raise UserError(f"{run_dir}: its labels differ from the first run's (e.g. `{extra[0]}`); "
                                "ensembled runs must be trained on the same label set")
            if len(frame) != len(first_frame):
                raise UserError(f"{run_dir}: read {len(frame)} rows of {data}, the first run read {len(first_frame)}")
            probs = probs[:, [task.classes.index(c) for c in first_task.classes]]
        total += weight * probs
        gc.collect()
    return first_task, first_frame, total


BASELINE_PREFIX = "baseline:"
"""An ensemble member `baseline:RUN` is RUN's classical TF-IDF baseline (baseline.npz, fitted in training)."""


def _member_probabilities(member: str | Path, data, device=None, trust_remote_code: bool = False):
    """(task, prepared frame, probabilities) of one ensemble member: a run dir / bundle, or `baseline:RUN`."""
    from tunelab.data.pipeline import load_frame

    text = str(member)
    if text.startswith(BASELINE_PREFIX):
        source = Path(text[len(BASELINE_PREFIX):])
        config, task = load_task(source)
        task = require_capability(task, SequenceClassificationTask, f"ensembling its baseline ({member})")
        frame = load_frame(str(data), config, task, "predict")
        return task, frame, task.baseline_proba(source, frame)
    run = load(member, device=device, trust_remote_code=trust_remote_code, capability=ProbabilisticTask,
               action=f"ensembling ({member})")
    frame = run.read(data)
    return run.task, frame, run.task.predict_proba(run.model, run.tokenizer, frame)


def check_prediction_output(output: str | Path, overwrite: bool, data: str | Path, run_dirs: list[str | Path]) -> None:
    """Refuse an existing `output` unless `overwrite`, and never let it replace the input data or a run's own
    files, model or checkpoints (even with `overwrite`)."""
    from tunelab.io import check_output_file
    from tunelab.training.rundir import RUN_ENTRIES

    run_dirs = [Path(str(d).removeprefix(BASELINE_PREFIX)) for d in run_dirs]
    files = [Path(data)] + [d / name for d in run_dirs for name in RUN_ENTRIES]
    folders = [d / name for d in run_dirs for name in ("final", "checkpoints", "plots")]
    check_output_file(output, overwrite, inputs=files, protected=folders)


def normalise_weights(weights: list[float] | None, n: int) -> list[float]:
    """Ensemble weights summing to 1 (equal when None); a UserError for a wrong count or negative values."""
    if not weights:
        return [1.0 / n] * n
    if len(weights) != n:
        raise UserError(f"--weights has {len(weights)} values for {n} runs")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError("--weights must be non-negative and not all zero")
    return [w / sum(weights) for w in weights]


BUNDLE_README = """# tunelab offline bundle: {name}

Self-contained: merged model weights and tokenizer in `final/`, the resolved
config in `config.yaml`, what the task learned from data in `task_state.json`.
No network is needed (set HF_HUB_OFFLINE=1 on the target machine).

    tunelab predict {name} --data test.csv --output submission.csv

or in Python:

    import tunelab
    run = tunelab.load("{name}")
    predictions = run.predict("test.csv")

task: {task}   base model: {model}   exported from: {source}
"""


BUNDLE_MARKER = ".tunelab-bundle"
BUNDLE_ENTRIES = frozenset({BUNDLE_MARKER, "final", "config.yaml", "task_state.json", "metrics.json", "README.md",
                            "baseline.npz"})


def export_bundle(run_dir: str | Path, target: str | Path, overwrite: bool = False,
                  trust_remote_code: bool = False) -> Path:
    """Write a folder that `tunelab.load` / `tunelab predict` can use offline: merged weights, tokenizer, config, state.

    An existing `target` is replaced only with `overwrite` and only if it is a tunelab bundle (it holds the
    `.tunelab-bundle` marker and nothing tunelab did not write); the new bundle is complete before it replaces it."""
    from tunelab.io import atomic_path, atomic_write_text

    target = Path(target)
    _check_bundle_target(Path(run_dir), target, overwrite)
    # Adapters are merged into the base weights on load; saved in full precision, predicted in the run's dtype.
    predicts_in = load_task(run_dir)[0].model.predict_dtype
    run = load(run_dir, trust_remote_code=trust_remote_code, dtype="float32")
    source = RunDir(Path(run_dir))
    config = run.config.model_copy(deep=True)
    config.model.predict_dtype = predicts_in
    config.lora.enabled = False  # the weights in final/ already include the adapter
    with atomic_path(target, is_dir=True) as tmp:
        bundle = RunDir(tmp)
        run.model.save_pretrained(str(bundle.final))
        run.tokenizer.save_pretrained(str(bundle.final))
        save_config(config, bundle.config)
        shutil.copyfile(source.task_state, bundle.task_state)
        if source.metrics.exists():
            shutil.copyfile(source.metrics, bundle.metrics)
        atomic_write_text(tmp / "README.md", BUNDLE_README.format(
            name=target.name, task=config.task.name, model=config.model.name_or_path, source=source.path))
        if (source.path / "baseline.npz").exists():
            shutil.copyfile(source.path / "baseline.npz", tmp / "baseline.npz")
        atomic_write_text(tmp / BUNDLE_MARKER, json.dumps({"exported_from": str(source.path)}) + "\n")
    return target


def _check_bundle_target(run_dir: Path, target: Path, overwrite: bool) -> None:
    """Refuse (UserError) a bundle target that would replace or mix with anything tunelab did not write."""
    if str(target).strip() in ("", ".", "..") or target.resolve() == Path.cwd().resolve() \
            or target.resolve() in Path.cwd().resolve().parents:
        raise UserError(f"--offline-bundle {target} is the current directory (or contains it); name a new folder, "
                        "e.g. --offline-bundle bundle")
    if run_dir.exists() and (target.resolve() == run_dir.resolve() or run_dir.resolve() in target.resolve().parents
                             or target.resolve() in run_dir.resolve().parents):
        raise UserError(f"--offline-bundle {target} overlaps the run {run_dir}; choose a folder outside it")
    if not target.exists():
        if target.parent.exists() and not target.parent.is_dir():
            raise UserError(f"--offline-bundle {target}: {target.parent} is a file, not a folder")
        return
    if not target.is_dir():
        raise UserError(f"--offline-bundle {target} is a file; name a new folder")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return  # an empty folder made for the bundle
    if not overwrite:
        raise UserError(f"{target} exists; pass --overwrite to replace an earlier bundle there, or choose another "
                        "--offline-bundle")
    if BUNDLE_MARKER not in entries:
        raise UserError(f"{target} is not a tunelab bundle (no {BUNDLE_MARKER}); --overwrite replaces only an "
                        "earlier bundle, never another folder: choose a new --offline-bundle")
    foreign = [name for name in entries if name not in BUNDLE_ENTRIES]
    if foreign:
        raise UserError(f"{target} holds files tunelab did not write ({', '.join(foreign[:5])}); move them out "
                        "or choose another --offline-bundle")


def check_submission_file(path: str | Path, fmt: str, test: str | Path | None = None, id_column: str | None = None):
    """Validate a submission file (columns, ids, probabilities); with `test`, every test id exactly once."""
    from tunelab.data.readers import read_table
    from tunelab.io.submission import FORMATS, check_submission

    expected = None
    if test is not None:
        spec = FORMATS.get(fmt)
        column = id_column or (spec.id_column if spec else "id")
        frame = read_table(test)
        if column not in frame.columns:
            raise UserError(f"{test}: no id column `{column}` (set --id-column)")
        expected = frame[column].tolist()
    return check_submission(path, fmt, expected)


@dataclass
class TestReport:
    answers: pd.DataFrame  # category, question, answer, reference
    tokens_per_second: float
    new_tokens: int
    seconds: float


def run_test_mode(run: LoadedRun, per_category: int = 2, max_new_tokens: int = 96) -> TestReport:
    """Test mode: answer `per_category` held-out questions per category (the run's own eval split);
    writes test_answers.json into the run dir."""
    from tunelab.inference.predict import generate_rows
    from tunelab.io import atomic_write_json

    task = require_capability(run.task, GenerativeTask, "test mode")
    held_out = held_out_rows(run)
    sample = (held_out.groupby("category", sort=True).head(per_category) if "category" in held_out.columns
              else held_out.head(per_category * 3))
    generation = run.config.generation.model_copy(update={"max_new_tokens": max_new_tokens})
    generated, stats = generate_rows(task, run.model, run.tokenizer, sample, generation)
    answers = pd.DataFrame({
        "category": sample["category"].astype(str).tolist() if "category" in sample.columns else [""] * len(sample),
        "question": [str(row.get("question", row.get("prompt", row.get("dialogue", "")))) for _, row in sample.iterrows()],
        "answer": generated["prediction"].tolist(),
        "reference": [task.reference(row) for _, row in sample.iterrows()],
    })
    report = TestReport(answers, stats.tokens_per_second, stats.new_tokens, stats.seconds)
    if run.run_dir is not None:
        atomic_write_json(run.run_dir / "test_answers.json", {"tokens_per_second": stats.tokens_per_second,
                                                              "answers": answers.to_dict("records")})
    return report


# -- serving (tunelab serve) ---------------------------------------------------------------------------------------
def generation_scheduler(run: LoadedRun, max_batch: int = 16, gather_ms: float = 10.0, max_queue: int = 64):
    """Request batching over `run`'s model (not yet started): concurrent requests are gathered for `gather_ms`
    and generated as one batch of at most `max_batch`; at most `max_queue` wait (more is `QueueFull`)."""
    from tunelab.inference.batching import BatchScheduler
    from tunelab.inference.engine import GenerationEngine

    require_capability(run.task, GenerativeTask, "serving text generation")
    engine = GenerationEngine(run.model, run.tokenizer, run.config.generation)
    return BatchScheduler(engine, max_batch=max_batch, gather_ms=gather_ms, max_queue=max_queue)


def classify_records(run: LoadedRun, records: list[dict]) -> tuple[list[str], Any]:
    """(class names, (rows, classes) probabilities) for input rows given as dicts of the task's logical fields
    (`text` for a classify run; `prompt`, `response_a`, `response_b` for a preference run): the probabilities
    `tunelab predict` writes for the same rows (temperature, A/B swap averaging and a 2-way model's tie floor
    included)."""
    from tunelab.tasks.preference import WINNERS

    task = require_capability(run.task, ProbabilisticTask, "classification")
    if not records:
        raise UserError("no inputs to classify")
    targets = set(task.fields.targets)
    groups = [g for g in dict.fromkeys(tuple(f for f in group if f not in targets) for group in task.fields.any_of) if g]
    for n, record in enumerate(records):
        if not any(all(f in record for f in group) for group in groups):
            raise UserError(f"input {n} has fields {sorted(record)}; this {task.name} run reads "
                            + " or ".join("(" + ", ".join(g) + ")" for g in groups))
    frame = task.prepare(pd.DataFrame(records).reset_index(drop=True), "predict")
    predictions = run.predict(frame)
    columns = [c for c in predictions.columns if str(c).startswith("prob:")] or \
              [c for c in WINNERS if c in predictions.columns]
    return [str(c).removeprefix("prob:") for c in columns], predictions[columns].to_numpy(dtype="float64")


# -- exports for other tools (tunelab export --merged / --gguf) ---------------------------------------------------
@dataclass
class MergedExport:
    path: Path
    model_class: str
    """The transformers class that loads it: AutoModelForCausalLM or AutoModelForSequenceClassification."""
    differences: list[str]
    """How plain transformers' outputs differ from the run's (empty: the same outputs)."""


MERGED_README = """# {name}: merged weights exported by tunelab

The run's LoRA adapter (if any) is merged into the base weights, saved in float32 with the tokenizer.
Plain transformers loads it, no tunelab or peft needed:

    from transformers import {model_class}, AutoTokenizer
    model = {model_class}.from_pretrained("{name}")
    tokenizer = AutoTokenizer.from_pretrained("{name}")

task: {task}   base model: {base}   exported from: {source}
{labels}{differences}"""


def export_merged(run_dir: str | Path, target: str | Path, overwrite: bool = False,
                  trust_remote_code: bool = False) -> MergedExport:
    """Write `run_dir`'s model with its adapter merged (fp32) and its tokenizer to the folder `target`, for
    `AutoModelFor...from_pretrained(target)`. Where plain transformers cannot give the run's outputs (mean
    pooling done by tunelab's hooks, calibration, A/B swap averaging) the folder's README says so, and so does
    the returned `differences`: nothing differs silently."""
    from tunelab.models.export import HEAD_CLASSES, check_export_folder, save_merged

    source, target = Path(run_dir), Path(target)
    check_export_folder(target, source, overwrite)
    run = load(source, device="cpu", trust_remote_code=trust_remote_code, dtype="float32")  # fp32 merge on the CPU
    differences = _merged_differences(run)
    model_class = HEAD_CLASSES[run.task.head]
    labels = ""
    if isinstance(run.task, ProbabilisticTask):
        labels = f"labels (logit order): {', '.join(run.task.classes)}\n"
    notes = "".join(f"\n- {d}" for d in differences)
    readme = MERGED_README.format(
        name=target.name, model_class=model_class, task=run.task.name, base=run.config.model.name_or_path,
        source=source, labels=labels,
        differences=f"\n## Outputs that differ from the run\n{notes}\n" if differences else
        "\nPlain transformers gives the run's logits.\n")
    save_merged(run.model, run.tokenizer, target, readme, {"exported_from": str(source), "model_class": model_class,
                                                           "differences": differences})
    return MergedExport(target, model_class, differences)


def _merged_differences(run: LoadedRun) -> list[str]:
    """What plain transformers, given the merged folder, computes differently from `tunelab.load(run)`."""
    notes = []
    if run.task.head == "sequence_classification" and run.config.model.pooling == "mean":
        notes.append("POOLING: this run reads the encoder as the attention-masked MEAN of its token states "
                     "(model.pooling: mean, done by tunelab's forward hooks); plain transformers uses the BERT "
                     "pooler (CLS -> dense -> tanh), so its logits and labels DIFFER from the run's. Load it with "
                     "`tunelab.load` on the run or an offline bundle (`tunelab export RUN --offline-bundle DIR`) to "
                     "get the run's outputs.")
    temperature = float(getattr(run.task, "temperature", 1.0) or 1.0)
    if abs(temperature - 1.0) > 1e-9:
        notes.append(f"calibration: tunelab's probabilities are softmax(logits / {temperature:.4f}) (temperature "
                     "scaling fitted after training); the logits are the same.")
    options = run.task.options
    if run.task.name == "preference":
        if getattr(options, "architecture", "cross") == "reward":
            notes.append("preference (reward model): each logit row scores one (prompt, response) input; tunelab "
                         "turns two scores into a/b/tie probabilities (Bradley-Terry / Davidson).")
        elif getattr(options, "swap_tta", False):
            notes.append("preference: tunelab averages each prediction with the A/B-swapped one (swap_tta); the "
                         "logits of one input order are the same.")
    return notes


def export_gguf(target_run: str | Path, path: str | Path, tensor_type: str = "f16", overwrite: bool = False,
                trust_remote_code: bool = False) -> Path:
    """Write a run on a llama-architecture decoder (or such a model itself, e.g. `smollm2-135m-instruct`) as one
    GGUF file for llama.cpp / Ollama: adapter merged, tensors in `tensor_type` (f16, bf16, f32), tokenizer
    and chat template in the metadata."""
    from tunelab.io import check_output_file
    from tunelab.models.export import GGUF_TYPES, write_gguf

    path = Path(path)
    if path.suffix.lower() != ".gguf":
        raise UserError(f"--gguf {path}: name a file ending in .gguf")
    if tensor_type not in GGUF_TYPES:
        raise UserError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)}, got `{tensor_type}`")
    run_dir = Path(target_run)
    is_run = (run_dir / "config.yaml").exists()
    check_output_file(path, overwrite, option="--gguf", protected=[run_dir / n for n in ("final", "checkpoints")] if is_run else ())
    run = load_target(target_run, device="cpu", trust_remote_code=trust_remote_code, capability=GenerativeTask,
                      action="GGUF export", dtype="float32")  # tensors are cast from full precision
    name = run_dir.name if is_run else str(target_run)
    return write_gguf(run.model, run.tokenizer, path, tensor_type, name=name)
