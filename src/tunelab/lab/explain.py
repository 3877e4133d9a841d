""""Trainer explained": one real optimizer step of a run, narrated with its own numbers (`tunelab lab explain`).

The step is assembled exactly as `tunelab train` assembles a run (training.recipe: task encode path, collator,
`load_model_for_training` with LoRA, `training_arguments`, `make_trainer`), then `trainer.train()` runs until the
explained step is done. A thin TunelabTrainer subclass and a callback only *observe*: the batch the step drew,
its loss, the gradients before clipping, the parameters before and after `optimizer.step()`, AdamW's state,
the learning rate, time and peak memory per phase. Nothing is saved into a run directory.
"""
from __future__ import annotations

import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback

from tunelab.data.collate import IGNORE_INDEX
from tunelab.errors import UserError
from tunelab.models.hardware import peak_rss_bytes
from tunelab.training.trainer import TunelabTrainer

MARKDOWN = "explain.md"
LR_PLOT = "lr_schedule.png"
GRADIENT_PLOT = "gradient_norms.png"


# -- what one step showed ---------------------------------------------------------------------------------
@dataclass
class ExampleLoss:
    index: int              # row in the step's batch (0-based, over all accumulated micro-batches)
    tokens: int             # real (non-padding) tokens
    padding: int
    counted: int            # positions the loss counts: labels != -100 (after the causal shift), or 1 per label
    loss: float             # this example's mean loss over its counted positions
    preview: str            # the start of the trained text (or the class a classifier is taught)


@dataclass
class GradientGroup:
    name: str               # "embeddings", "layer 3", "head", ...
    lora_a: float           # gradient L2 norms before clipping, per kind of parameter
    lora_b: float
    full: float             # trainable non-LoRA parameters (modules_to_save, a new head, a full fine-tune)
    trainable: int          # trainable parameter count
    frozen: int             # frozen parameter count
    frozen_with_grad: int   # frozen tensors holding a gradient (should be 0)


@dataclass
class StepExplanation:
    config_path: str
    task: str
    model: str
    hardware: str
    step: int
    planned_steps: int
    trainable_summary: str
    # batch
    micro_batches: list[tuple[int, ...]]  # input_ids shape per accumulated batch
    tokens: int
    padding_tokens: int
    counted_positions: int
    token_level: bool       # loss per token (causal LM) or one label per example
    examples: list[ExampleLoss]
    # forward
    loss: float             # the Trainer's loss for this step (what it logs and backpropagates)
    loss_from_examples: float  # the same, rebuilt from per-example losses (token-weighted mean)
    # backward
    gradient_groups: list[GradientGroup]
    grad_norm: float        # total norm before clipping, as the Trainer computed it
    max_grad_norm: float
    largest_gradients: list[tuple[str, float]]
    # optimizer
    optimizer: str
    learning_rate: float
    optimizer_settings: dict
    optimizer_state: dict
    change_norm: float      # L2 norm of (after - before) over every trainable parameter
    change_max: float       # largest |after - before| of one value
    change_by_kind: dict    # kind -> L2 norm of its change
    parameter_norm: float   # L2 norm of the trainable parameters before the step
    # scheduler
    scheduler: str
    warmup_steps: int
    lr_curve: list[float]   # learning rate used at steps 1..planned_steps
    note: str = ""          # why this step was chosen, when it was not asked for
    # memory and time
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)   # phase -> process peak RSS after it (bytes)
    cuda_peak: int | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def padding_share(self) -> float:
        return self.padding_tokens / self.tokens if self.tokens else 0.0

    @property
    def clip_factor(self) -> float:
        """What clipping multiplied the gradients by (1 = not clipped)."""
        if self.max_grad_norm <= 0 or self.grad_norm <= self.max_grad_norm:
            return 1.0
        return self.max_grad_norm / (self.grad_norm + 1e-6)


# -- setting up the run exactly as `tunelab train` does ----------------------------------------------------
@dataclass
class StepSetup:
    config: object
    config_path: str
    task: object
    tokenizer: object
    hardware: object
    train_examples: list
    model: object
    trainer: "ObservedTrainer"
    seconds: dict[str, float]
    peak_rss: dict[str, int]
    workdir: tempfile.TemporaryDirectory  # the Trainer's output_dir: the step saves nothing, but it needs one

    def close(self) -> None:
        self.workdir.cleanup()


def prepare_step(config, config_path: str = "", echo: Callable[[str], None] = lambda line: None) -> StepSetup:
    """Data, model and Trainer as `tunelab train` builds them, stopped before the first step."""
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_utils import SaveStrategy

    from tunelab.data.pipeline import load_splits
    from tunelab.models import detect_hardware, load_tokenizer
    from tunelab.models.loading import check_head
    from tunelab.tasks import get_task
    from tunelab.training.arguments import training_arguments
    from tunelab.training.recipe import load_model_for_training, make_trainer
    from tunelab.training.rundir import RunDir

    seconds, memory = {}, {}
    started = time.perf_counter()
    task = get_task(config.task.name)(config)
    hardware = detect_hardware(config.model)
    check_head(config.model, task.head)
    tokenizer = load_tokenizer(config.model)
    splits = load_splits(config, task, tokenizer)
    task.fit(splits.train)
    train_examples = task.encode_train(splits.train, tokenizer, config.train.max_length)
    if not train_examples:
        raise UserError(f"{config.data.train_path}: no trainable examples (all answers truncated away at "
                        f"max_length={config.train.max_length}?)")
    seconds["data: read, split, encode"] = time.perf_counter() - started
    memory["data"] = peak_rss_bytes()
    echo(f"data: {len(splits.train)} train rows -> {len(train_examples)} examples")

    started = time.perf_counter()
    model = load_model_for_training(config, task, hardware, tokenizer, train_examples, echo=echo)
    seconds["model: load + LoRA"] = time.perf_counter() - started
    memory["model"] = peak_rss_bytes()

    workdir = tempfile.TemporaryDirectory(prefix="tunelab-explain-")
    # has_eval=False: the step is the thing explained; evaluation would only add time.
    args = training_arguments(config, RunDir(Path(workdir.name)), hardware, task, n_train=len(train_examples),
                              has_eval=False)
    args.save_strategy = SaveStrategy.NO  # the step is explained, never checkpointed
    trainer = make_trainer(config, task, model, tokenizer, args, train_examples, trainer_class=ObservedTrainer)
    trainer.remove_callback(PrinterCallback)
    return StepSetup(config, config_path, task, tokenizer, hardware, train_examples, model, trainer, seconds, memory,
                     workdir)


# -- observing the step ------------------------------------------------------------------------------------
class ObservedTrainer(TunelabTrainer):
    """TunelabTrainer that records what happens at one optimizer step (`observe_step`) and changes nothing."""

    observe_step: int = 0   # 1-based optimizer step to record; 0 = none
    record: dict

    def _observing(self) -> bool:
        return self.observe_step > 0 and self.state.global_step == self.observe_step - 1

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self._observing():
            return super().training_step(model, inputs, num_items_in_batch)
        record = self.record
        record.setdefault("batches", []).append({k: v.detach().clone() if torch.is_tensor(v) else v
                                                 for k, v in inputs.items()})
        record["num_items_in_batch"] = int(num_items_in_batch) if num_items_in_batch is not None else None
        started = time.perf_counter()
        record["forward_seconds_in_step"] = record.get("forward_seconds_in_step", 0.0)
        loss = super().training_step(model, inputs, num_items_in_batch)
        record["step_seconds"] = record.get("step_seconds", 0.0) + time.perf_counter() - started
        record["loss"] = record.get("loss", 0.0) + float(loss)
        record["peak_rss_backward"] = peak_rss_bytes()
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (self._observing() and model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        started = time.perf_counter()
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.record["forward_seconds_in_step"] += time.perf_counter() - started
        self.record["peak_rss_forward"] = peak_rss_bytes()
        return result

    def _clip_grad_norm(self, model):
        if self._observing() and "gradients" not in self.record:
            self.record["gradients"] = _gradient_norms(model)  # before clipping, as the logged grad_norm
            norm = super()._clip_grad_norm(model)
            self.record["grad_norm"] = float(norm)
            return norm
        return super()._clip_grad_norm(model)


class _StepObserver(TrainerCallback):
    """Parameters before/after the optimizer step, the learning rate it used, and stopping right after it."""

    def __init__(self, trainer: ObservedTrainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.trainer._observing():
            self.trainer.record["before"] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            self.trainer.record["step_started"] = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not self.trainer._observing():
            return
        record = self.trainer.record
        if "gradients" not in record:  # max_grad_norm 0: no clipping call to record them in
            record["gradients"] = _gradient_norms(model)
            record["grad_norm"] = math.sqrt(sum(g.lora_a ** 2 + g.lora_b ** 2 + g.full ** 2 for g in record["gradients"][0]))
        record["learning_rate"] = float(optimizer.param_groups[0]["lr"])
        record["clipped"] = record["optimizer_started"] = time.perf_counter()

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not self.trainer._observing():
            return
        record = self.trainer.record
        record["optimizer_seconds"] = time.perf_counter() - record["optimizer_started"]
        record["peak_rss_optimizer"] = peak_rss_bytes()
        record["after"] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        record["optimizer_state"] = _optimizer_state(optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.trainer.observe_step:
            control.should_training_stop = True
            control.should_save = False
        return control


def run_explained_step(setup: StepSetup, step: int | None = None) -> StepExplanation:
    """Run `trainer.train()` up to optimizer step `step` and explain that step from what it recorded.
    `step` None: the first step whose learning rate is above 0 (warmup starts at 0, so step 1 often moves nothing)."""
    trainer = setup.trainer
    planned = trainer.planned_steps() or 0
    curve = lr_curve(trainer.args, planned)
    note = ""
    if step is None:
        step = next((i + 1 for i, lr in enumerate(curve) if lr > 0), 1)
        if step > 1:
            earlier = "step 1 runs" if step == 2 else f"steps 1-{step - 1} run"
            note = (f"{earlier} at learning rate 0 (warmup starts from 0) and move no weight, so step "
                    f"{step}, the first that does, is explained (--step 1 shows step 1)")
    if step < 1:
        raise UserError("--step must be at least 1")
    if planned and step > planned:
        raise UserError(f"--step {step}: this run has only {planned} optimizer steps")
    trainer.observe_step, trainer.record = step, {}
    trainer.add_callback(_StepObserver(trainer))
    losses = _LossesBeforeStep(setup)
    trainer.add_callback(losses)
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    record = trainer.record
    if "after" not in record:
        raise UserError(f"step {step} did not run (the optimizer skipped it, e.g. a non-finite gradient)")

    seconds = dict(setup.seconds)
    if step > 1:
        seconds["step 1 (run, not observed)" if step == 2 else f"steps 1-{step - 1} (run, not observed)"] = record["step_started"] - started
    seconds["forward (loss)"] = record["forward_seconds_in_step"]
    seconds["backward (gradients)"] = record["step_seconds"] - record["forward_seconds_in_step"]
    seconds["clip + inspect gradients"] = record["clipped"] - record["step_started"] - record["step_seconds"]
    seconds["optimizer step"] = record["optimizer_seconds"]
    seconds["per-example losses (explain only)"] = losses.seconds
    peak = dict(setup.peak_rss)
    peak.update({"forward": record.get("peak_rss_forward", 0), "backward": record["peak_rss_backward"],
                 "optimizer step": record["peak_rss_optimizer"]})

    batches = record["batches"]
    examples, token_level = losses.examples, losses.token_level
    counted = sum(e.counted for e in examples)
    from_examples = (sum(e.loss * e.counted for e in examples) / counted) if counted else float("nan")
    before, after = record["before"], record["after"]
    change_sq: dict[str, float] = {}
    change_max, parameter_sq = 0.0, 0.0
    for name, old in before.items():
        delta = (after[name].float() - old.float())
        change_sq[_kind(name, True)] = change_sq.get(_kind(name, True), 0.0) + float(delta.pow(2).sum())
        change_max = max(change_max, float(delta.abs().max())) if delta.numel() else change_max
        parameter_sq += float(old.float().pow(2).sum())
    groups, largest = record["gradients"]
    args = trainer.args

    explanation = StepExplanation(
        config_path=setup.config_path, task=setup.task.name, model=setup.config.model.name_or_path,
        hardware=setup.hardware.describe(), step=step, planned_steps=planned,
        trainable_summary=_trainable_line(setup.model),
        micro_batches=[tuple(b["input_ids"].shape) for b in batches if "input_ids" in b],
        tokens=sum(_tokens(b) for b in batches), padding_tokens=sum(_padding(b, setup.tokenizer) for b in batches),
        counted_positions=counted, token_level=token_level, examples=examples,
        loss=record["loss"], loss_from_examples=from_examples,
        gradient_groups=groups, grad_norm=record["grad_norm"],
        max_grad_norm=float(args.max_grad_norm or 0.0), largest_gradients=largest,
        optimizer=type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
        learning_rate=record["learning_rate"], optimizer_settings=_optimizer_settings(trainer.optimizer),
        optimizer_state=record["optimizer_state"],
        change_norm=math.sqrt(sum(change_sq.values())), change_max=change_max,
        change_by_kind={k: math.sqrt(v) for k, v in change_sq.items()}, parameter_norm=math.sqrt(parameter_sq),
        scheduler=str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        warmup_steps=args.get_warmup_steps(planned) if planned else 0,
        lr_curve=curve, note=note,
        seconds=seconds, peak_rss=peak,
        cuda_peak=torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None)
    seconds["whole explained run"] = total
    return explanation


class _LossesBeforeStep(TrainerCallback):
    """Per-example losses of the explained step's batch, on the weights the step starts from. Computed after
    the Trainer's own forward/backward (same weights: the optimizer has not stepped yet), so they never
    disturb the step; dropout is off for them (eval mode), the step itself ran with the run's settings."""

    def __init__(self, setup: StepSetup):
        self.setup = setup
        self.examples: list[ExampleLoss] = []
        self.token_level = True
        self.seconds = 0.0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        trainer = self.setup.trainer
        if not trainer._observing() or self.examples:
            return
        started = time.perf_counter()
        self.examples, self.token_level = example_losses(trainer, model, trainer.record["batches"], self.setup.tokenizer,
                                                         getattr(self.setup.task, "classes", None))
        self.seconds = time.perf_counter() - started
        trainer.record["optimizer_started"] = time.perf_counter()  # the optimizer's time starts after this


def example_losses(trainer, model, batches, tokenizer, classes=None) -> tuple[list[ExampleLoss], bool]:
    """Each example's loss through the Trainer's own `compute_loss`, one row at a time (mean over its positions)."""
    was_training = model.training
    model.eval()
    examples, token_level, index = [], True, 0
    try:
        with torch.no_grad():
            for batch in batches:
                rows = batch["input_ids"].shape[0]
                for row in range(rows):
                    one = {k: v[row:row + 1] if torch.is_tensor(v) and v.dim() and v.shape[0] == rows else v
                           for k, v in batch.items()}
                    labels = one.get("labels")
                    loss = float(trainer.compute_loss(model, one))
                    tokens, padding = _tokens(one), _padding(one, tokenizer)
                    if torch.is_tensor(labels) and labels.dim() == 2:
                        kept = labels[0, 1:] != IGNORE_INDEX  # the label at t+1 is predicted at t
                        counted = int(kept.sum())
                        trained_ids = labels[0, 1:][kept][:24].tolist()
                        preview = tokenizer.decode(trained_ids)
                    else:
                        token_level, counted = False, 1
                        target = int(labels.flatten()[0]) if torch.is_tensor(labels) else None
                        preview = (f"label: {classes[target]}" if classes and target is not None
                                   and 0 <= target < len(classes) else f"label: {target}")
                    examples.append(ExampleLoss(index, tokens, padding, counted, loss, preview))
                    index += 1
    finally:
        model.train(was_training)
    return examples, token_level


def _tokens(batch) -> int:
    return int(batch["input_ids"].numel()) if "input_ids" in batch else 0


def _padding(batch, tokenizer) -> int:
    if "attention_mask" in batch:
        return int((batch["attention_mask"] == 0).sum())
    if "input_ids" in batch and tokenizer.pad_token_id is not None:
        return int((batch["input_ids"] == tokenizer.pad_token_id).sum())
    return 0


# -- gradients, optimizer, scheduler --------------------------------------------------------------------------
_LAYER = re.compile(r"\.(?:layers|layer|h|blocks|block)\.(\d+)\.")


def _group(name: str) -> str:
    """The layer group a parameter belongs to, from its name."""
    found = _LAYER.search(name)
    if found:
        return f"layer {int(found.group(1))}"
    if "embed" in name or ".wte." in name or ".wpe." in name:
        return "embeddings"
    if any(part in name for part in ("lm_head", "score", "classifier", "pooler")):
        return "head"
    if "norm" in name:
        return "final norm"
    return "other"


def _kind(name: str, trainable: bool) -> str:
    if ".lora_A." in name:
        return "LoRA A"
    if ".lora_B." in name:
        return "LoRA B"
    return "trained in full" if trainable else "frozen"


def _group_order(name: str) -> tuple:
    order = {"embeddings": 0, "final norm": 2, "head": 3, "other": 4}
    return (1, int(name.split()[1])) if name.startswith("layer ") else (order.get(name, 5), 0)


def _gradient_norms(model) -> tuple[list[GradientGroup], list[tuple[str, float]]]:
    """Gradient L2 norms per layer group and kind of parameter (LoRA A, LoRA B, trained in full), the frozen
    parameters counted (and any frozen tensor that holds a gradient), plus the five largest tensors."""
    squares: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    tensors: list[tuple[str, float]] = []
    for name, param in model.named_parameters():
        group, kind = _group(name), _kind(name, param.requires_grad)
        squares.setdefault(group, {})
        counts.setdefault(group, {"trainable": 0, "frozen": 0, "frozen_with_grad": 0})
        if not param.requires_grad:
            counts[group]["frozen"] += param.numel()
            counts[group]["frozen_with_grad"] += param.grad is not None
            continue
        counts[group]["trainable"] += param.numel()
        norm = float(param.grad.detach().float().norm()) if param.grad is not None else 0.0
        squares[group][kind] = squares[group].get(kind, 0.0) + norm ** 2
        tensors.append((name, norm))
    groups = [GradientGroup(name, math.sqrt(squares[name].get("LoRA A", 0.0)), math.sqrt(squares[name].get("LoRA B", 0.0)),
                            math.sqrt(squares[name].get("trained in full", 0.0)), counts[name]["trainable"],
                            counts[name]["frozen"], counts[name]["frozen_with_grad"])
              for name in sorted(squares, key=_group_order)]
    largest = sorted(tensors, key=lambda t: -t[1])[:5]
    return groups, [(_short_name(n), v) for n, v in largest]


def _short_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".default.", ".")


def _optimizer_settings(optimizer) -> dict:
    inner = getattr(optimizer, "optimizer", optimizer)
    groups = inner.param_groups
    first = groups[0]
    settings = {key: first[key] for key in ("betas", "eps", "weight_decay") if key in first}
    # The Trainer always makes a no-weight-decay group (biases, norms); an empty one says nothing.
    settings["param groups"] = ", ".join(f"{len(g['params'])} tensors (weight decay {g.get('weight_decay', 0)})"
                                         for g in groups if g["params"])
    return settings


def _optimizer_state(optimizer) -> dict:
    """AdamW's state after the step: its step count, the memory it holds, and what its moments look like."""
    inner = getattr(optimizer, "optimizer", optimizer)
    state_bytes, param_bytes, tensors, steps = 0, 0, 0, set()
    moments: dict[str, float] = {}
    for group in inner.param_groups:
        for param in group["params"]:
            param_bytes += param.numel() * param.element_size()
            state = inner.state.get(param)
            if not state:
                continue
            tensors += 1
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim():
                    state_bytes += value.numel() * value.element_size()
                    moments[key] = moments.get(key, 0.0) + float(value.float().pow(2).sum())
                elif key == "step":
                    steps.add(int(value))
    return {"tensors with state": tensors, "state keys": sorted(moments),
            "optimizer step count": sorted(steps)[0] if len(steps) == 1 else sorted(steps),
            "state memory (bytes)": state_bytes, "trainable parameter memory (bytes)": param_bytes,
            **{f"L2 norm of {key}": math.sqrt(value) for key, value in sorted(moments.items())}}


def lr_curve(args, planned_steps: int) -> list[float]:
    """The learning rate at each step 1..planned_steps, from the same scheduler the Trainer builds from `args`."""
    from transformers import get_scheduler

    if not planned_steps:
        return []
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    scheduler = get_scheduler(args.lr_scheduler_type, dummy, num_warmup_steps=args.get_warmup_steps(planned_steps),
                              num_training_steps=planned_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    curve = []
    for _ in range(planned_steps):
        curve.append(float(dummy.param_groups[0]["lr"]))
        dummy.step()
        scheduler.step()
    return curve


def _trainable_line(model) -> str:
    from tunelab.models import trainable_summary

    return trainable_summary(model)


# -- the narration: sections shared by the terminal and explain.md -----------------------------------------
@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)  # (title, header, rows)
    image: str | None = None


def _mb(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2 ** 20:,.0f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:,.1f} KiB"


def sections(e: StepExplanation) -> list[Section]:
    out = []
    setup = Section("Setup", [
        f"config `{e.config_path}`: task {e.task}, model `{e.model}`, {e.hardware}",
        e.trainable_summary,
        f"explained: optimizer step {e.step} of {e.planned_steps} planned "
        f"({len(e.micro_batches)} batch{'es' if len(e.micro_batches) != 1 else ''} accumulated into it)"]
        + ([e.note] if e.note else []))
    out.append(setup)

    shapes = " + ".join("×".join(map(str, s)) for s in e.micro_batches)
    batch = Section("Batch", [
        f"input_ids {shapes} (examples × tokens, padded to the longest in the batch; length-bucketed sampling "
        f"keeps lengths in a batch close)",
        f"{e.tokens} token slots: {e.padding_tokens} padding ({100 * e.padding_share:.1f}%), "
        + (f"{e.counted_positions} positions the loss counts ({100 * e.counted_positions / max(e.tokens, 1):.1f}%)"
           if e.token_level else f"{len(e.examples)} labels, one per example")])
    out.append(batch)

    if e.token_level:
        rule = ("the loss is the mean cross-entropy over the positions whose label is not -100: the model at "
                "position t predicts the label at t+1, so a batch counts labels[:, 1:] != -100; prompt, system "
                "and padding tokens are -100 and cost nothing")
    else:
        rule = "one label per example: the loss is the mean cross-entropy of the examples' class predictions"
    forward = Section("Forward: the loss", [
        rule,
        f"the Trainer's loss for this step: {e.loss:.6f}",
        f"rebuilt from the per-example losses below ({'token-weighted' if e.token_level else 'mean'}): "
        f"{e.loss_from_examples:.6f}" + ("" if math.isclose(e.loss, e.loss_from_examples, rel_tol=1e-3, abs_tol=1e-4)
                                         else " (differs: dropout/noise during the step, or a special loss)")])
    forward.tables.append(("loss per example", ["#", "tokens", "padding", "counted", "loss", "trained text starts"],
                           [[str(x.index), str(x.tokens), str(x.padding), str(x.counted), f"{x.loss:.4f}",
                             _clip(x.preview)] for x in e.examples]))
    out.append(forward)

    frozen_with_grad = sum(g.frozen_with_grad for g in e.gradient_groups)
    frozen = sum(g.frozen for g in e.gradient_groups)
    lora_a = math.sqrt(sum(g.lora_a ** 2 for g in e.gradient_groups))
    lora_b = math.sqrt(sum(g.lora_b ** 2 for g in e.gradient_groups))
    has_lora = any(g.lora_a or g.lora_b for g in e.gradient_groups) or "LoRA" in " ".join(e.change_by_kind)
    backward = Section("Backward: the gradients", [
        f"total gradient norm {e.grad_norm:.4g} (before clipping); max_grad_norm {e.max_grad_norm:g}: "
        + (f"clipped, every gradient × {e.clip_factor:.3g}" if e.clip_factor < 1 else "not clipped"),
        f"frozen base: {frozen:,} parameters, {frozen_with_grad} tensors with a gradient "
        f"({'none: backward never computes them' if not frozen_with_grad else 'unexpected'})"])
    if has_lora:
        backward.lines.append(f"LoRA A gradient norm {lora_a:.4g}, LoRA B {lora_b:.4g}"
                              + (": B is still all zeros (LoRA starts it at zero, so B·A adds nothing at first), "
                                 "and A's gradient goes through B: A gets none until B has moved; B learns first"
                                 if lora_a == 0 and lora_b > 0 else ""))
    backward.tables.append(("gradient norm per layer group", ["group", "LoRA A", "LoRA B", "in full", "trainable",
                                                              "frozen"],
                            [[g.name, _norm(g.lora_a, has_lora), _norm(g.lora_b, has_lora),
                              _norm(g.full, g.full > 0 or not has_lora), f"{g.trainable:,}", f"{g.frozen:,}"]
                             for g in e.gradient_groups]))
    backward.tables.append(("largest gradients", ["tensor", "norm"], [[n, f"{v:.4g}"] for n, v in e.largest_gradients]))
    backward.image = GRADIENT_PLOT
    out.append(backward)

    state = e.optimizer_state
    optimizer = Section("Optimizer step", [
        f"{e.optimizer} at learning rate {e.learning_rate:.3g}; " +
        ", ".join(f"{k} {v}" for k, v in e.optimizer_settings.items()),
        f"state after the step: {state['tensors with state']} tensors, step count {state['optimizer step count']}, "
        f"keys {', '.join(state['state keys'])}: {_mb(state['state memory (bytes)'])} beside "
        f"{_mb(state['trainable parameter memory (bytes)'])} of trainable weights (Adam keeps two moments per weight)",
        ", ".join(f"{k} {v:.4g}" for k, v in state.items() if k.startswith("L2 norm")),
        f"parameter change: L2 norm {e.change_norm:.4g} ({e.change_norm / e.parameter_norm:.3g} of the trainable "
        f"weights' norm {e.parameter_norm:.4g}); largest single change {e.change_max:.3g}" if e.parameter_norm else
        f"parameter change: L2 norm {e.change_norm:.4g}; largest single change {e.change_max:.3g}",
        "by kind: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(e.change_by_kind.items()))])
    if e.learning_rate == 0:
        optimizer.lines.append("the learning rate is 0 at this step (warmup starts from 0): the weights do not move, "
                               "AdamW only fills its moments; explain a later step with --step 2")
    elif e.step == 1:
        optimizer.lines.append(f"at step 1 Adam's bias-corrected update is about lr × sign(gradient): every weight "
                               f"with a gradient moves by about {e.learning_rate:.3g}, whatever its gradient's size "
                               f"(largest change here {e.change_max:.3g})")
    out.append(optimizer)

    curve = e.lr_curve
    peak = max(curve) if curve else 0.0
    scheduler = Section("Scheduler: the learning rate over the run", [
        f"{e.scheduler}, {e.warmup_steps} warmup steps, {e.planned_steps} steps planned; peak {peak:.3g}, "
        f"step 1 {curve[0] if curve else 0:.3g}, last step {curve[-1] if curve else 0:.3g}",
        f"this step (step {e.step}) used {e.learning_rate:.3g}"], image=LR_PLOT)
    out.append(scheduler)

    memory = Section("Memory and time")
    memory.tables.append(("per phase", ["phase", "seconds"], [[k, f"{v:.2f}"] for k, v in e.seconds.items()]))
    memory.tables.append(("process peak RSS after each phase", ["after", "peak RSS"],
                          [[k, _mb(v)] for k, v in e.peak_rss.items()]))
    if e.cuda_peak is not None:
        memory.lines.append(f"peak CUDA memory allocated: {_mb(e.cuda_peak)}")
    out.append(memory)
    return out


def _norm(value: float, shown: bool) -> str:
    return f"{value:.4g}" if shown else "-"


def _clip(text: str, limit: int = 60) -> str:
    text = text.replace("\n", "↵")
    return text if len(text) <= limit else text[:limit] + "…"


def render_markdown(e: StepExplanation) -> str:
    out = [f"# Trainer explained: step {e.step} of `{e.config_path or e.model}`", ""]
    for section in sections(e):
        out += [f"## {section.title}", ""]
        out += [f"- {_md(line)}" for line in section.lines]
        out.append("")
        for title, header, rows in section.tables:
            out += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
            out.append("")
        if section.image:
            out += [f"![{section.title}]({section.image})", ""]
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


# -- writing -----------------------------------------------------------------------------------------------
def write_outputs(e: StepExplanation, output: Path) -> list[Path]:
    """explain.md and its two plots in `output`, each written atomically."""
    from tunelab.io import atomic_write_text

    output.mkdir(parents=True, exist_ok=True)
    files = [_plot_lr(e, output / LR_PLOT), _plot_gradients(e, output / GRADIENT_PLOT)]
    files.insert(0, atomic_write_text(output / MARKDOWN, render_markdown(e)))
    e.files = files
    return files


def _save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from tunelab.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_lr(e: StepExplanation, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    steps = list(range(1, len(e.lr_curve) + 1))
    ax.plot(steps, e.lr_curve, color="#4c72b0", marker="." if len(steps) <= 60 else None)
    ax.axvline(e.step, color="#c44e52", linestyle="--", alpha=0.7, label=f"explained step {e.step}")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{e.scheduler}, {e.warmup_steps} warmup steps")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def _plot_gradients(e: StepExplanation, path: Path) -> Path:
    plt = _pyplot()
    groups = e.gradient_groups
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(groups) + 2), 3.5))
    positions = range(len(groups))
    width = 0.28
    for offset, (label, values, color) in enumerate((("LoRA A", [g.lora_a for g in groups], "#55a868"),
                                                     ("LoRA B", [g.lora_b for g in groups], "#4c72b0"),
                                                     ("trained in full", [g.full for g in groups], "#dd8452"))):
        if any(values):
            ax.bar([p + (offset - 1) * width for p in positions], values, width, label=label, color=color)
    ax.set_xticks(list(positions), [g.name.replace("layer ", "L") for g in groups], rotation=90, fontsize=7)
    ax.set_ylabel("gradient L2 norm")
    frozen_with_grad = sum(g.frozen_with_grad for g in groups)
    ax.set_title(f"step {e.step}: gradient norm per layer group (frozen tensors with a gradient: {frozen_with_grad})")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _save_figure(fig, path)


def explain(config, output: Path, step: int | None = None, config_path: str = "",
            echo: Callable[[str], None] = lambda line: None) -> StepExplanation:
    """One real optimizer step of `config`'s run, explained; explain.md and plots written to `output`."""
    setup = prepare_step(config, config_path, echo)
    try:
        explanation = run_explained_step(setup, step)
    finally:
        setup.close()
    write_outputs(explanation, output)
    return explanation
