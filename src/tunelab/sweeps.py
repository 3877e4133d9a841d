"""Hyper-parameter sweeps: `tunelab sweep CONFIG --trials N`.

Each trial is an ordinary training run (`api.train`) in `<sweep_dir>/trial-NNN`, with a few config keys
sampled by Optuna (TPE). The objective is the task's own eval metric and direction
(`task.metric_for_best_model()`: eval_loss for sft, map@3 for classify, log_loss for preference, ...),
read from the trial's metrics. The sweep directory holds:

    study.db           Optuna's sqlite storage (`--resume` continues the sweep from it)
    sweep.json         what is searched: metric, direction, ranges, the base config
    trial-000/ ...     one normal run directory per trial (+ train.log, its training output)
    trials.csv         one row per trial: state, metric, params, duration
    best_config.yaml   the full resolved config with the best trial's values (`tunelab train` it)
    plots/trials.png   metric per trial and the best so far

Weak trials are pruned (Optuna's MedianPruner) from the Trainer's evaluations when `train` accepts
`extra_callbacks`; otherwise every trial runs to the end.

The module is called `sweeps` (not `sweep`) so that a `tunelab.sweep` function in the public facade never
clashes with a submodule of the same name.
"""
from __future__ import annotations

import contextlib
import gc
import inspect
import json
import math
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from tunelab import api
from tunelab.config import RunConfig, build_config, save_config
from tunelab.config.io import read_yaml
from tunelab.errors import UserError, did_you_mean
from tunelab.io import atomic_path, atomic_write_json, atomic_write_text
from tunelab.tasks import get_task

__all__ = ["sweep", "SweepResult", "Param", "PARAMS", "DEFAULT_PARAMS", "parse_params"]


@dataclass(frozen=True)
class Param:
    """One searchable setting: its config key, kind and default range."""

    name: str
    key: str
    kind: str  # "float" | "int" | "number" (int when both bounds are whole numbers, else float)
    low: float
    high: float
    log: bool = False
    aliases: tuple[str, ...] = ()

    def fmt(self, value: Any) -> str:
        if isinstance(value, int):
            return str(value)
        return f"{value:.2e}" if self.log else f"{value:.4g}"


PARAMS: dict[str, Param] = {p.name: p for p in (
    Param("learning_rate", "train.learning_rate", "float", 1e-5, 1e-3, log=True, aliases=("lr",)),
    Param("epochs", "train.epochs", "number", 1, 4),
    Param("lora_r", "lora.r", "int", 4, 64, log=True),
    Param("warmup_ratio", "train.warmup_ratio", "float", 0.0, 0.2),
    Param("lora_alpha", "lora.alpha", "int", 8, 128, log=True),
    Param("lora_dropout", "lora.dropout", "float", 0.0, 0.2),
    Param("weight_decay", "train.weight_decay", "float", 0.0, 0.1),
    Param("batch_size", "train.batch_size", "int", 2, 16, log=True),
    Param("label_smoothing", "train.label_smoothing", "float", 0.0, 0.2),
)}
DEFAULT_PARAMS = ("learning_rate", "epochs", "lora_r", "warmup_ratio")
DEFAULT_TRIALS = 10
SWEEP_KEYS = ("trials", "params", "timeout", "seed")
"""Keys of the optional `sweep:` section of a config file (read here; `tunelab train` never sees it)."""


@dataclass
class SweepResult:
    sweep_dir: Path
    metric: str
    """The objective as the run's metrics name it, e.g. `eval_loss`, `eval_map@3`."""
    greater_is_better: bool
    trials: pd.DataFrame
    """One row per trial, as in trials.csv: trial, state, <metric>, one column per param, duration_s, run_dir, note."""
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict = field(default_factory=dict)
    best_run_dir: Path | None = None
    best_config: Path | None = None
    params: dict = field(default_factory=dict)
    """The search space: name -> (low, high)."""


# -- search space -------------------------------------------------------------------------------------------

def _lookup(name: str, where: str = "--param") -> Param:
    wanted = name.strip()
    for p in PARAMS.values():
        if wanted == p.name or wanted in p.aliases or wanted == p.key:
            return p
    known = [*PARAMS, *(a for p in PARAMS.values() for a in p.aliases), *(p.key for p in PARAMS.values())]
    raise UserError(f"{where}: unknown sweep parameter `{wanted}`{did_you_mean(wanted, known)}; "
                    f"choose from {', '.join(PARAMS)}")


def _number(text: Any, where: str) -> float:
    if isinstance(text, bool):
        raise UserError(f"{where}: `{text}` is not a number")
    if isinstance(text, (int, float)):
        return text
    try:
        value = float(str(text).strip())
    except ValueError:
        raise UserError(f"{where}: `{text}` is not a number") from None
    return int(value) if value.is_integer() and "." not in str(text) and "e" not in str(text).lower() else value


def _range(p: Param, low: Any, high: Any, where: str) -> tuple[float, float]:
    low, high = _number(low, where), _number(high, where)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise UserError(f"{where}: the range must be finite numbers")
    if low > high:
        raise UserError(f"{where}: low ({low}) is above high ({high}); write {p.name}=LOW:HIGH")
    if p.kind == "int":
        if not (float(low).is_integer() and float(high).is_integer()):
            raise UserError(f"{where}: {p.name} takes whole numbers (got {low}:{high})")
        low, high = int(low), int(high)
    elif p.kind == "number" and float(low).is_integer() and float(high).is_integer():
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    if p.log and low <= 0:
        raise UserError(f"{where}: {p.name} is searched on a log scale, so its range must be above 0 (got {low})")
    return low, high


def parse_params(params: Iterable[str] | Mapping[str, Any] | None, where: str = "--param") -> dict[str, tuple]:
    """The search space, name -> (low, high), from `NAME` / `NAME=LOW:HIGH` strings or a mapping
    (`{name: [low, high]}`, `{name: "low:high"}`, `{name: None}` for the default range).

    None or empty: the default space (learning_rate, epochs, lora_r, warmup_ratio). Errors are UserErrors
    naming the parameter (an unknown name gets a did-you-mean)."""
    if not params:
        return {name: _range(PARAMS[name], PARAMS[name].low, PARAMS[name].high, name) for name in DEFAULT_PARAMS}
    items: list[tuple[str, Any]] = []
    if isinstance(params, Mapping):
        items = list(params.items())
    elif isinstance(params, str):
        raise UserError(f"{where}: give a list of NAME=LOW:HIGH items, not one string")
    else:
        for item in params:
            name, sep, spec = str(item).partition("=")
            if not name.strip():
                raise UserError(f"{where} expects NAME=LOW:HIGH (e.g. learning_rate=1e-5:1e-3), got `{item}`")
            items.append((name, spec if sep else None))
    space: dict[str, tuple] = {}
    for name, spec in items:
        p = _lookup(str(name), where)
        label = f"{where} {p.name}"
        if p.name in space:
            raise UserError(f"{label}: given twice")
        if spec is None or spec == "":
            bounds: tuple = (p.low, p.high)
        elif isinstance(spec, (list, tuple)):
            if len(spec) != 2:
                raise UserError(f"{label}: give [low, high], got {list(spec)}")
            bounds = tuple(spec)
        elif isinstance(spec, str) and ":" in spec:
            bounds = tuple(spec.split(":", 1))
        else:
            raise UserError(f"{label}: expected LOW:HIGH (e.g. {p.name}={p.fmt(p.low)}:{p.fmt(p.high)}), got `{spec}`; "
                            f"to fix a value instead, use --set {p.key}={spec}")
        space[p.name] = _range(p, *bounds, label)
    return space


def _check_space(space: dict[str, tuple], base: RunConfig, explicit: bool, source: str,
                 echo: Callable[[str], None]) -> dict[str, tuple]:
    """Drop (default space) or refuse (explicit space) parameters that would change nothing; check that both
    ends of every range make a valid config."""
    reasons = {
        "epochs": f"train.max_steps is set ({base.train.max_steps}), so epochs change nothing"
        if base.train.max_steps else None,
        **{n: "lora.enabled is false (full fine-tuning)" for n in ("lora_r", "lora_alpha", "lora_dropout")
           if not base.lora.enabled},
    }
    checked = {}
    for name, bounds in space.items():
        reason = reasons.get(name)
        if reason and explicit:
            raise UserError(f"--param {name}: {reason}; drop it from the search")
        if reason:
            echo(f"not searching {name}: {reason}")
            continue
        for value in bounds:
            build_config(base.model_dump(mode="json"), {PARAMS[name].key: value}, source=source,
                         override_source=f"--param {name}")
        checked[name] = bounds
    if not checked:
        raise UserError("nothing left to search: give parameters with --param NAME=LOW:HIGH")
    return checked


def _suggest(trial, name: str, bounds: tuple) -> Any:
    p, (low, high) = PARAMS[name], bounds
    if isinstance(low, int) and isinstance(high, int):
        return trial.suggest_int(name, low, high, log=p.log)
    return trial.suggest_float(name, float(low), float(high), log=p.log)


# -- inputs ---------------------------------------------------------------------------------------------------

def _read_base(config: str | Path | RunConfig, overrides: dict | None) -> tuple[RunConfig, dict, str]:
    """(validated base config, its `sweep:` section, source name)."""
    if isinstance(config, RunConfig):
        base = build_config(config.model_dump(mode="json"), overrides, source="config") if overrides else config
        return base.model_copy(deep=True), {}, "config"
    raw = read_yaml(config)
    section = raw.pop("sweep", None) or {}
    if not isinstance(section, dict):
        raise UserError(f"{config}: `sweep` must be a mapping (trials, params, timeout, seed)")
    for key in section:
        if key not in SWEEP_KEYS:
            raise UserError(f"{config}: unknown key `sweep.{key}`{did_you_mean(key, SWEEP_KEYS)}; "
                            f"choose from {', '.join(SWEEP_KEYS)}")
    return build_config(raw, overrides, source=str(config)), section, str(config)


def _sweep_dir(output_dir: str | Path | None, base: RunConfig) -> Path:
    if output_dir:
        return Path(output_dir)
    if base.train.output_dir:
        return Path(base.train.output_dir)
    return Path("runs") / f"sweep-{base.task.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


# -- pruning --------------------------------------------------------------------------------------------------

def _supports_extra_callbacks() -> bool:
    try:
        return "extra_callbacks" in inspect.signature(api.train).parameters
    except (TypeError, ValueError):
        return False


def pruning_callback(trial, metric: str):
    """A transformers TrainerCallback that reports `metric` at each evaluation to the Optuna trial and
    stops the run (raises optuna.TrialPruned) when the pruner says the trial is weak."""
    import optuna
    from transformers import TrainerCallback

    class PruningCallback(TrainerCallback):
        def __init__(self):
            self.reported: set[int] = set()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(metric)  # the `eval_before_*` evaluation has no `eval_*` key: skipped
            step = int(state.global_step)
            if value is None or step in self.reported or not math.isfinite(value):
                return
            self.reported.add(step)
            trial.report(float(value), step)
            if trial.should_prune():
                trial.set_user_attr("note", f"pruned at step {step} ({metric} {value:.4g})")
                raise optuna.TrialPruned(f"pruned at step {step}")

    return PruningCallback()


# -- the sweep ------------------------------------------------------------------------------------------------

def sweep(config: str | Path | RunConfig, trials: int | None = None,
          params: Iterable[str] | Mapping[str, Any] | None = None, output_dir: str | Path | None = None,
          timeout: float | None = None, echo: Callable[[str], None] = print, *, overrides: dict | None = None,
          resume: bool = False, overwrite: bool = False, seed: int | None = None,
          verbose: bool = False) -> SweepResult:
    """Search hyper-parameters with `trials` training runs; returns the trials and the best one.

    `config`: a YAML file (its optional `sweep:` section gives trials/params/timeout/seed) or a RunConfig.
    `params`: `["learning_rate=1e-5:1e-3", "lora_r"]` or `{"learning_rate": (1e-5, 1e-3)}`; None = the
    `sweep:` section's, else learning_rate, epochs, lora_r, warmup_ratio with default ranges.
    `output_dir`: the sweep directory (default: train.output_dir, else runs/sweep-<task>-<time>).
    `timeout`: seconds after which no new trial starts. `resume` continues an interrupted sweep in
    `output_dir` (its stored config and search space) up to `trials` finished trials in all.
    `verbose`: echo each trial's training output too (it is always saved in <trial dir>/train.log).
    """
    import optuna
    from optuna.trial import TrialState

    base, section, source = _read_base(config, overrides)
    sweep_dir = _sweep_dir(output_dir, base)
    state_file, db = sweep_dir / "sweep.json", sweep_dir / "study.db"
    trials = trials if trials is not None else section.get("trials", DEFAULT_TRIALS)
    timeout = timeout if timeout is not None else section.get("timeout")
    seed = seed if seed is not None else section.get("seed", base.train.seed)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UserError(f"--trials must be a whole number of at least 1 (got {trials!r})")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise UserError(f"--timeout must be a number of seconds above 0 (got {timeout!r})")

    if resume:
        if not state_file.exists() or not db.exists():
            raise UserError(f"--resume: {sweep_dir} holds no sweep (no sweep.json / study.db); start it without --resume")
        stored = json.loads(state_file.read_text(encoding="utf-8"))
        echo(f"resuming the sweep in {sweep_dir}: its stored config and search space are used")
        base = build_config(stored["config"], source=str(state_file))
        space = {name: tuple(bounds) for name, bounds in stored["params"].items()}
        seed = stored.get("seed", seed)
    else:
        if (sweep_dir / "config.yaml").exists() or (sweep_dir / ".tunelab-run").exists():
            raise UserError(f"{sweep_dir} holds a training run, not a sweep; choose another --output-dir")
        replace = state_file.exists() or db.exists() or any(sweep_dir.glob("trial-*"))
        if replace and not overwrite:
            raise UserError(f"{sweep_dir} already holds a sweep; use --resume to continue it, --overwrite to "
                            "replace it, or another --output-dir")
        explicit = bool(params) or bool(section.get("params"))
        space = parse_params(params or section.get("params"), "--param" if params else f"{source}: sweep.params")
        space = _check_space(space, base, explicit, source, echo)
        if replace:  # only once the new sweep is known to be valid
            _remove_sweep(sweep_dir)

    task = get_task(base.task.name)(base)
    name, greater = task.metric_for_best_model()
    metric = f"eval_{name}"
    if not base.data.eval_path and not base.data.eval_fraction:
        raise UserError(f"{source}: a sweep scores each trial on held-out data: set data.eval_fraction "
                        "(e.g. 0.1) or data.eval_path")
    base_raw = base.model_dump(mode="json")
    created = not sweep_dir.exists()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_json(state_file, {"metric": metric, "greater_is_better": greater, "seed": seed,
                                       "params": {k: list(v) for k, v in space.items()}, "config": base_raw})

    prune_inside = _supports_extra_callbacks()
    storage = f"sqlite:///{db.resolve().as_posix()}"
    with _quiet_optuna():
        study = optuna.create_study(
            storage=storage, study_name="sweep", load_if_exists=resume,
            direction="maximize" if greater else "minimize",
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
        # Seeded by the trials already stored, so a resumed sweep does not replay the first one's samples.
        # TPE samples at random for its first trials, then models the good region: a third of a short sweep.
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials),
                                                   n_startup_trials=max(3, min(10, trials // 3)))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)  # interrupted last time
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    remaining = max(trials - done, 0) if resume else trials
    ranges = ", ".join(f"{n} {PARAMS[n].fmt(lo)}..{PARAMS[n].fmt(hi)}{' (log)' if PARAMS[n].log else ''}"
                       for n, (lo, hi) in space.items())
    echo(f"sweep dir: {sweep_dir}   objective: {metric} ({'higher' if greater else 'lower'} is better)   "
         f"trials: {remaining}{f' more ({done} done)' if resume else ''}")
    echo(f"searching: {ranges}")
    if not prune_inside:
        echo("pruning: off (train() takes no extra_callbacks here), so every trial runs to its end")

    def objective(trial) -> float:
        values = {n: _suggest(trial, n, space[n]) for n in space}
        trial_dir = sweep_dir / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(trial_dir))
        cfg = build_config(base_raw, {**{PARAMS[n].key: v for n, v in values.items()},
                                      "train.output_dir": str(trial_dir)},
                           source=str(state_file), override_source=f"sweep trial {trial.number}")
        lines: list[str] = []

        def trial_echo(*args: Any, **kwargs: Any) -> None:
            lines.append(" ".join(str(a) for a in args))
            if verbose:
                echo(*args, **kwargs)

        kwargs = {"extra_callbacks": [pruning_callback(trial, metric)]} if prune_inside else {}
        try:
            result = api.train(cfg, overwrite=True, echo=trial_echo, **kwargs)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("note", "interrupted")
            raise
        except Exception as exc:
            trial.set_user_attr("note", f"{type(exc).__name__}: {exc}"[:300])
            raise
        finally:
            with contextlib.suppress(OSError):
                atomic_write_text(trial_dir / "train.log", "\n".join(lines) + "\n")
            _free_memory()
        value = result.metrics.get(metric, result.metrics.get(name))
        if value is None or not math.isfinite(value):
            trial.set_user_attr("note", f"no finite {metric} in {trial_dir}/metrics.json")
            raise _TrialFailed(f"trial {trial.number}: no finite {metric}")
        return float(value)

    def after_trial(study, frozen) -> None:
        _write_outputs(study, space, metric, greater, base_raw, sweep_dir)
        echo(_trial_line(study, frozen, space, metric, trials))

    try:
        if remaining > 0:
            with _quiet_optuna():
                study.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[after_trial],
                               catch=_catchable(), gc_after_trial=True)
    except BaseException as exc:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if not resume and not finished:
            # Nothing to continue: remove what this sweep wrote, so the same command starts it again.
            _remove_sweep(sweep_dir, whole=created)
            if isinstance(exc, KeyboardInterrupt):
                raise KeyboardInterrupt("interrupted before any trial finished; nothing was kept: run the same "
                                        "command to start the sweep again") from None
            raise
        _write_outputs(study, space, metric, greater, base_raw, sweep_dir)
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt(
                f"interrupted after {len(finished)} finished trials (results so far in {sweep_dir}); continue the "
                f"sweep with `tunelab sweep CONFIG --resume --output-dir {sweep_dir}`") from None
        raise
    return _write_outputs(study, space, metric, greater, base_raw, sweep_dir)


SWEEP_FILES = ("sweep.json", "study.db", "trials.csv", "best_config.yaml", "plots/trials.png")


def _remove_sweep(sweep_dir: Path, whole: bool = False) -> None:
    """Delete a sweep's own files and trial folders (`whole`: the folder, which the sweep created)."""
    if whole:
        shutil.rmtree(sweep_dir, ignore_errors=True)
        return
    for name in SWEEP_FILES:
        with contextlib.suppress(OSError):
            (sweep_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (sweep_dir / "plots").rmdir()  # only when empty
    for trial_dir in sweep_dir.glob("trial-[0-9]*"):
        shutil.rmtree(trial_dir, ignore_errors=True)


class _TrialFailed(Exception):
    """A trial that trained but produced no usable objective value: recorded as failed, the sweep goes on."""


def _catchable() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [_TrialFailed]
    with contextlib.suppress(ImportError, AttributeError):
        import torch

        errors.append(torch.OutOfMemoryError)  # a too-large batch/rank: that trial fails, the sweep goes on
    return tuple(errors)


def _free_memory() -> None:
    gc.collect()
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna's own INFO/WARNING lines (one per trial, failure tracebacks) off: the sweep prints its own."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


# -- outputs --------------------------------------------------------------------------------------------------

def _duration(frozen) -> float | None:
    if frozen.datetime_start and frozen.datetime_complete:
        return round((frozen.datetime_complete - frozen.datetime_start).total_seconds(), 1)
    return None


def _best(study, greater: bool):
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not complete:
        return None
    return (max if greater else min)(complete, key=lambda t: t.value)


def _trial_line(study, frozen, space: dict, metric: str, total: int) -> str:
    params = "  ".join(f"{n}={PARAMS[n].fmt(frozen.params[n])}" for n in space if n in frozen.params)
    state = frozen.state.name.lower()
    took = _duration(frozen)
    took = f"{took:.0f} s" if took is not None else "-"
    if state == "complete":
        outcome = f"{metric} {frozen.value:.4f}"
    else:
        outcome = f"{state}: {frozen.user_attrs.get('note', '')}".rstrip(": ")
    best = _best(study, study.direction.name == "MAXIMIZE")
    best_text = f", best {best.value:.4f} trial-{best.number:03d}" if best is not None else ""
    finished = len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    return f"trial-{frozen.number:03d} [{finished}/{total}] {outcome} ({took}{best_text})  {params}"


def _write_outputs(study, space: dict, metric: str, greater: bool, base_raw: dict, sweep_dir: Path) -> SweepResult:
    """trials.csv, best_config.yaml and plots/trials.png, each written atomically; the SweepResult."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.RUNNING:
            continue
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     metric: t.value if t.state == TrialState.COMPLETE else None,
                     **{n: t.params.get(n) for n in space}, "duration_s": _duration(t),
                     "run_dir": t.user_attrs.get("run_dir", ""), "note": t.user_attrs.get("note", "")})
    columns = ["trial", "state", metric, *space, "duration_s", "run_dir", "note"]
    frame = pd.DataFrame(rows, columns=columns)
    with atomic_path(sweep_dir / "trials.csv") as tmp:
        frame.to_csv(tmp, index=False)
    result = SweepResult(sweep_dir=sweep_dir, metric=metric, greater_is_better=greater, trials=frame,
                         params=dict(space))
    best = _best(study, greater)
    if best is not None:
        overrides = {PARAMS[n].key: v for n, v in best.params.items() if n in PARAMS}
        raw = {**base_raw, "train": {k: v for k, v in base_raw["train"].items() if k != "output_dir"}}
        config = build_config(raw, overrides, source="sweep best trial")
        save_config(config, sweep_dir / "best_config.yaml")
        result.best_trial, result.best_value, result.best_params = best.number, best.value, dict(best.params)
        result.best_run_dir = Path(best.user_attrs.get("run_dir", sweep_dir / f"trial-{best.number:03d}"))
        result.best_config = sweep_dir / "best_config.yaml"
    if rows:
        _plot(frame, metric, greater, sweep_dir / "plots" / "trials.png")
    return result


def _plot(frame: pd.DataFrame, metric: str, greater: bool, target: Path) -> None:
    """Metric per finished trial (dots) and the best so far (a step line); pruned/failed trials as ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[frame["state"] == "complete"].sort_values("trial")
    fig, ax = plt.subplots(figsize=(7, 4))
    if not done.empty:
        values = done[metric].astype(float)
        best = values.cummax() if greater else values.cummin()
        ax.plot(done["trial"], values, "o", label=metric)
        ax.step(done["trial"], best, where="post", label="best so far")
    others = frame[frame["state"] != "complete"]
    for _, row in others.iterrows():
        ax.axvline(row["trial"], color="grey", alpha=0.3, linestyle=":")
    if not others.empty:
        ax.plot([], [], color="grey", alpha=0.5, linestyle=":", label="pruned / failed")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"sweep: {metric} ({'higher' if greater else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
