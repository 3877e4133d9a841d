"""tunelab's Trainer: transformers' Trainer with the batching and loss tunelab uses by default.

Four changes, each measured to pay on CPU (bench/README.md; GPU not yet measured), none changes the maths:
- length-bucketed batches (`sampler.LengthBucketSampler`) for any dataset whose examples have
  `input_ids`, so dynamic padding wastes little compute; deterministic per (seed, epoch), so
  resuming from a checkpoint replays the same batches;
- for causal LMs with token labels, the LM head runs only on positions that carry a label
  (`logits_to_keep=<bool mask>`): prompt and padding tokens skip the vocab projection and
  the full fp32 logits tensor is never built. Where the head is a plain Linear on the backbone's last
  hidden state (checked once against the model's own logits), head and loss run fused per chunk
  (`losses.linear_cross_entropy`), so not even the kept rows' logits outlive their chunk.
  The loss equals transformers' own. That choice is written into every checkpoint
  (`tunelab_trainer.json`) and a resumed run takes it from there, so both halves run the same path;
- batches over a padded-token budget run as exact micro-batches (`microbatch.split_by_token_budget`),
  so the longest bucket does not set peak memory.
- on CPU in bf16, short batches skip torch's fused attention kernel, slow there: models tunelab loads run
  `tunelab_sdpa`'s grouped attention (`models.attention`), other SDPA models torch's math kernel
  (`attention_kernels`); under mixed precision LoRA layers skip the input cast that autocast undoes
  (`peft_setup.skip_input_casts_under_autocast`).
Anything else (custom `compute_loss_func`, label smoothing, Liger, metrics that need logits)
takes transformers' plain path, and so do micro-batches under DeepSpeed, FSDP and context parallelism
(`micro_batches_off`, said in one line).

Several processes (torchrun / accelerate launch, README "Scaling out"): each length bucket is one global
batch cut into one part per rank (`sampler.ShardedBuckets`), so N processes at batch B train on the rows one
process trains on at batch N*B, every example once per epoch; the eval loss is each batch's own token mean
(not normalised by the count over ranks, which would weigh ranks by their token counts).

The process-wide torch settings a run depends on (CPU threads, float32 matmul precision) are explicit
arguments, applied only while `train`/`evaluate`/`predict` run and restored afterwards.

Checkpoints are crash-safe: each is written into `<output_dir>/.saving/checkpoint-N` and renamed to
`checkpoint-N` only when complete, so a kill -9, Ctrl-C or full disk while saving never leaves a torn
checkpoint where a resume looks (`rundir.checkpoint_problem` still vets older or hand-made folders).
Rotation (`save_total_limit`) counts complete checkpoints only. A full disk while saving is one clear
error that names the checkpoint and keeps the last good one. Each checkpoint also records the running
sum of per-step training losses, so `train_loss` after a resume covers the whole run, not only the
resumed steps.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Callable

import torch
from transformers import Trainer
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from tunelab.errors import UserError
from tunelab.io import atomic_write_json, disk_full
from tunelab.io.atomic import replace_path
from tunelab.models.hardware import attention_kernels, matmul_precision as matmul_precision_scope
from tunelab.models.peft_setup import skip_input_casts_under_autocast
from tunelab.models.threads import choose_cpu_threads, cpu_threads as cpu_threads_scope
from tunelab.training.losses import (
    causal_lm_loss, kept_targets, linear_cross_entropy, supervised_positions, token_mean,
)
from tunelab.training.microbatch import split_by_token_budget
from tunelab.training.rundir import checkpoint_problem, checkpoint_step
from tunelab.training.sampler import LengthBucketSampler, ShardedBuckets, example_lengths

log = logging.getLogger(__name__)

# Padded tokens per forward/backward pass; bigger batches run as exact micro-batches, capping memory.
# CPU: fp32 activations cost ~3.9 MB/token for SmolLM2-135M, so 1024 keeps a LoRA run near 4-5 GB.
DEFAULT_TOKEN_BUDGET = {"cpu": 1024, "cuda": 16384}

CHECKPOINT_CHOICES = "tunelab_trainer.json"
"""Per checkpoint: the runtime choices a resumed run must repeat ({"fused_head_loss": true|false|null})."""

CHECKPOINT_LOSS = "tunelab_loss.json"
"""Per checkpoint: the running sum of per-step training losses ({"train_loss_sum": float, "train_loss_steps": int}),
so the `train_loss` of a resumed run covers every step of the run."""

STAGING = ".saving"
"""Checkpoints are written into `<output_dir>/.saving/checkpoint-N`, then renamed into place."""


class TunelabTrainer(Trainer):
    """`matmul_precision`: torch float32 matmul precision while it runs (`model.matmul_precision`; None = as is).
    `cpu_threads`: intra-op threads while it runs (`train.cpu_threads`); None = on CPU, chosen by
    `models.threads.choose_cpu_threads` (env, else measured). The count used is `self.cpu_threads`.
    `head_logits`: a classification task's map from the model's logits to its class logits (identity for one
    row per example; a reward model's per-sequence scores -> pair logits); with it, the trainer computes the
    cross-entropy itself (with `label_smoothing`), and evaluation sees the class logits."""

    def __init__(self, *args, length_bucketing: bool = True, selective_logits: bool = True,
                 fused_head_loss: bool = True, token_budget: int | str | None = "auto",
                 matmul_precision: str | None = None, cpu_threads: int | None = None,
                 head_logits: Callable[[torch.Tensor], torch.Tensor] | None = None, label_smoothing: float = 0.0,
                 **kwargs):
        self.head_logits = head_logits
        self.label_smoothing = label_smoothing
        self.length_bucketing = length_bucketing
        self.selective_logits = selective_logits
        self.fused_head_loss = fused_head_loss
        self._fused_heads: dict[int, tuple | None] = {}
        self._fused_decision: bool | None = None  # the last decision made; written into checkpoints
        self._resumed_fused: bool | None = None  # the decision read back from the checkpoint resumed from
        self.token_budget = token_budget
        self._loss_only_prediction = False
        self._predicting = False  # inside prediction_step (evaluation / predict)
        self._plain_path_said: set[str] = set()  # reasons `micro_batches_off` has said
        self.notice: Callable[[str], None] = log.warning  # one-line notices; the recipe prints them (main process)
        self._staging = False  # True while the Trainer writes a checkpoint: it goes under STAGING
        self._carried_loss: tuple[float, int] | None = None  # (loss sum, steps) before the resumed checkpoint
        self.stop_reason: str | None = None  # set by a signal (callbacks.StopOnSignal): stop, keep the checkpoint
        super().__init__(*args, **kwargs)
        if self.token_budget == "auto":
            self.token_budget = DEFAULT_TOKEN_BUDGET.get(self.args.device.type)
        self.matmul_precision = matmul_precision
        self.cpu_threads: int | None = None
        if cpu_threads is not None or self.args.device.type == "cpu":
            self.cpu_threads, source = choose_cpu_threads(cpu_threads)
            log.info("CPU threads: %d (%s)", self.cpu_threads, source)
        if matmul_precision is not None:
            log.info("float32 matmul precision: %s", matmul_precision)
        self._model_keeps_logits = _accepts_logits_to_keep(self.model)
        if self.args.bf16 or self.args.fp16:
            skip_input_casts_under_autocast(self.model)

    # -- process-wide torch settings, scoped to the work that uses them -----------------------
    @contextmanager
    def _torch_settings(self):
        with ExitStack() as stack:
            stack.enter_context(matmul_precision_scope(self.matmul_precision))
            stack.enter_context(cpu_threads_scope(self.cpu_threads))
            yield

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._carried_loss = None
        if resume_from_checkpoint:
            if resume_from_checkpoint is True:  # the newest *complete* one (transformers takes the newest folder)
                last = _last_complete(Path(self.args.output_dir)) if self.args.output_dir else None
                resume_from_checkpoint = str(last) if last is not None else True  # True: transformers' own error
            if resume_from_checkpoint is not True:
                problem = checkpoint_problem(resume_from_checkpoint)
                if problem is not None:
                    raise UserError(f"cannot resume from {resume_from_checkpoint}: {problem}")
                self._restore_choices(resume_from_checkpoint)
        staging = Path(self.args.output_dir or ".") / STAGING
        if self.args.should_save and staging.is_dir():  # checkpoints a killed run was writing: never complete
            shutil.rmtree(staging, ignore_errors=True)
        self._unmark_evaluation_prepared()
        self._say_engines_not_run()
        with self._torch_settings():
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        if self._carried_loss is not None:
            whole = self._whole_run_loss(output.training_loss)
            output = TrainOutput(output.global_step, whole, {**output.metrics, "train_loss": whole})
        return output

    def _say_engines_not_run(self) -> None:
        """accelerate enables FSDP and DeepSpeed only on accelerators: on CPU an FSDP/DeepSpeed accelerate config
        silently runs as plain DDP (gloo). Say so, once, rather than let the run look sharded."""
        for env, name, enabled in (("ACCELERATE_USE_FSDP", "FSDP", self.is_fsdp_enabled),
                                   ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed", self.is_deepspeed_enabled)):
            said = f"{name} not run"
            if os.environ.get(env, "").lower() == "true" and not enabled and said not in self._plain_path_said:
                self._plain_path_said.add(said)
                self.notice(f"the accelerate config asks for {name}, which accelerate runs only on GPUs: this run "
                            f"is plain data parallel on {self.args.device.type} ({self.args.world_size} processes)")

    def _unmark_evaluation_prepared(self) -> None:
        """An evaluation before training (the recipe's "eval loss before training") prepares the bare model with
        accelerate's `evaluation_mode`, which marks it prepared without wrapping it in DDP; `train` would then
        skip the DDP wrapper, and each process would step on its own gradients (no all-reduce). Clear the mark
        so training wraps it. FSDP and DeepSpeed prepare (wrap) the model for evaluation too: not affected."""
        model = self.model
        if (self.args.world_size > 1 and self.model_wrapped is model and not self.is_deepspeed_enabled
                and not self.is_fsdp_enabled and getattr(model, "_is_accelerate_prepared", False)):
            del model._is_accelerate_prepared
            self.accelerator._models = [m for m in self.accelerator._models if m is not model]

    def predict(self, *args, **kwargs):
        with self._torch_settings():
            return super().predict(*args, **kwargs)

    # -- checkpoints: written whole or not at all; they carry what a resumed run must repeat ----------
    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._staging else run_dir

    def _save_checkpoint(self, model, trial):
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / STAGING / name
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # writes into staging (see _get_output_dir)
            self._staging = False
            self._complete_checkpoint(run_dir, staging, name)
        except BaseException as exc:
            self._staging = False
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)  # a partial checkpoint is never kept (and frees the disk)
                _remove_if_empty(staging.parent)
            if disk_full(exc):
                last = _last_complete(run_dir)
                kept = f"the last good checkpoint ({last.name}) is kept" if last else "no earlier checkpoint exists"
                raise UserError(f"disk full while writing {run_dir / name}; {kept}. Free some space, then continue "
                                "with --resume") from None
            raise

    def _complete_checkpoint(self, run_dir: Path, staging: Path, name: str) -> None:
        self.accelerator.wait_for_everyone()  # every process has written its part
        best = self.state.best_model_checkpoint
        if best is not None and Path(best).parent.name == STAGING:  # the Trainer recorded the staging path
            # In every process: each one loads the best model at the end, from where the checkpoint ends up.
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
        if self.args.should_save:
            self._publish_checkpoint(run_dir, staging, name)
        self.accelerator.wait_for_everyone()  # no process reads the checkpoint before it is in place

    def _publish_checkpoint(self, run_dir: Path, staging: Path, name: str) -> None:
        final = run_dir / name
        self.state.save_to_json(str(staging / "trainer_state.json"))
        seen = self._total_loss_scalar + float(self._tr_loss.item()) if hasattr(self, "_tr_loss") else 0.0
        carried_sum, carried_steps = self._carried_loss or (0.0, 0)
        steps_now = self.state.global_step - getattr(self, "_initial_global_step", 0)
        atomic_write_json(staging / CHECKPOINT_CHOICES, {"fused_head_loss": self._fused_decision})
        atomic_write_json(staging / CHECKPOINT_LOSS, {"train_loss_sum": carried_sum + seen,
                                                      "train_loss_steps": carried_steps + steps_now})
        replace_path(staging, final)  # the same step saved again (e.g. after a resume) is replaced whole
        _remove_if_empty(run_dir / STAGING)
        self._rotate(run_dir)

    def _rotate(self, run_dir: Path) -> None:
        """Keep the newest `save_total_limit` complete checkpoints and the best one; delete the rest, and any
        incomplete checkpoint (a torn one from an earlier crash)."""
        limit = self.args.save_total_limit
        if not limit or limit <= 0:
            return
        found = sorted((checkpoint_step(p), p) for p in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                       if p.is_dir() and checkpoint_step(p) >= 0)
        complete = [p for _, p in found if checkpoint_problem(p) is None]
        keep = {p.name for p in complete[-limit:]}
        if self.state.best_model_checkpoint is not None:
            keep.add(Path(self.state.best_model_checkpoint).name)
        for _, folder in found:
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    # -- resuming a run whose training had already ended ------------------------------------
    def planned_steps(self) -> int | None:
        """The optimizer steps `train()` will run to (transformers' own count), or None if unknown."""
        try:
            return int(self.set_initial_training_values(self.args, self.get_train_dataloader())[-1])
        except Exception:  # noqa: BLE001 - an unknown length only loses the "already finished" shortcut
            return None

    def finished_output(self, checkpoint: str | os.PathLike) -> TrainOutput:
        """Restore a checkpoint saved at the end of training, as `train()` would have left the model (the best
        checkpoint's weights when the run keeps the best), without running another step."""
        from transformers.trainer_callback import TrainerState

        checkpoint = Path(checkpoint)
        self.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        best = self.state.best_model_checkpoint
        use = Path(best) if self.args.load_best_model_at_end and best and checkpoint_problem(best) is None else checkpoint
        with self._torch_settings():
            self._load_from_checkpoint(str(use))
        self._restore_choices(checkpoint)
        carried_sum, carried_steps = self._carried_loss or (float("nan"), 1)
        loss = carried_sum / carried_steps
        return TrainOutput(self.state.global_step, loss, {"train_runtime": 0.0, "train_loss": loss})

    def _restore_choices(self, checkpoint: str | os.PathLike) -> None:
        losses = Path(checkpoint) / CHECKPOINT_LOSS
        if losses.is_file():
            saved = json.loads(losses.read_text(encoding="utf-8"))
            if saved.get("train_loss_steps"):
                self._carried_loss = (float(saved["train_loss_sum"]), int(saved["train_loss_steps"]))
        path = Path(checkpoint) / CHECKPOINT_CHOICES
        if not path.is_file():
            return  # a checkpoint from before this file existed: decide afresh
        self._resumed_fused = json.loads(path.read_text(encoding="utf-8")).get("fused_head_loss")
        if self._resumed_fused is not None:
            self._fused_heads.clear()  # the checkpoint's decision wins over one made before train()
            self._fused_decision = self._resumed_fused

    def _whole_run_loss(self, resumed_part: float) -> float:
        """Mean training loss over every step of the run, from this call's mean and the checkpoint's sum."""
        carried_sum, carried_steps = self._carried_loss
        steps = self.state.global_step - carried_steps
        total_steps = carried_steps + max(steps, 0)
        return (carried_sum + resumed_part * max(steps, 0)) / total_steps if total_steps else resumed_part

    def log(self, logs, *args, **kwargs):
        if "train_loss" in logs and self._carried_loss is not None:  # the end-of-training summary
            logs = {**logs, "train_loss": self._whole_run_loss(logs["train_loss"])}
        return super().log(logs, *args, **kwargs)

    def _finalize_training(self, *args, **kwargs):
        if self.stop_reason is not None:
            # Stopped by a signal: the checkpoint just saved is what a resume needs. Loading the best model
            # would cost time for nothing, and save_total_limit=1 would delete that checkpoint.
            self.state.best_model_checkpoint = None
        return super()._finalize_training(*args, **kwargs)

    # -- batching -----------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # An explicit non-default strategy is the user's choice; bucketing replaces only the plain random one.
        if self.length_bucketing and self.args.train_sampling_strategy == "random" and _sized(dataset):
            lengths = example_lengths(dataset)
            if lengths is not None:
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                return LengthBucketSampler(lengths, self._bucket_size(), seed=seed)
        return super()._get_train_sampler(train_dataset)

    def get_train_dataloader(self):
        """Several processes with length buckets: each rank's batches come from `ShardedBuckets` (each bucket cut
        into one part per rank, every example once per epoch); everything else as transformers builds it."""
        config = getattr(self.args, "accelerator_config", None)
        if (self.args.world_size <= 1 or self.args.dataloader_drop_last or getattr(config, "split_batches", False)
                or getattr(config, "dispatch_batches", False)):
            return super().get_train_dataloader()
        sampler = self._get_train_sampler()
        if not isinstance(sampler, LengthBucketSampler):
            return super().get_train_dataloader()
        from functools import partial

        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        args = self.args
        collator = self._get_collator_with_removed_columns(self.data_collator, description="Training")
        params = {"num_workers": args.dataloader_num_workers, "pin_memory": args.dataloader_pin_memory,
                  "persistent_workers": args.dataloader_persistent_workers,
                  "worker_init_fn": partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index)}
        if args.dataloader_num_workers > 0:
            params.update(prefetch_factor=args.dataloader_prefetch_factor,
                          multiprocessing_context=args.dataloader_multiprocessing_context)
        # accelerate deals the batch sampler's batches round-robin (batch i to rank i % N): rank r gets part r.
        loader = self.accelerator.prepare(DataLoader(self.train_dataset, batch_sampler=ShardedBuckets(
            sampler, args.world_size), collate_fn=collator, **params))
        shard = getattr(loader, "batch_sampler", None)
        if shard is not None and not hasattr(shard, "sampler"):
            # So that DataLoaderShard.set_epoch reaches the buckets through skip_first_batches too (a resume
            # in the middle of a later epoch replays that epoch's order, not the first one's).
            shard.sampler = sampler
        return loader

    def _bucket_size(self) -> int:
        """Rows per bucket: one micro-step's batch over all processes (`get_train_dataloader` cuts it into one
        part per rank), so N processes at batch B train on exactly the rows one process sees at batch N*B.
        `split_batches`: the DataLoader's batch is already the global one."""
        config = getattr(self.args, "accelerator_config", None)
        if getattr(config, "split_batches", False):
            return self._train_batch_size
        return self._train_batch_size * max(self.args.world_size, 1)

    # -- memory: micro-batches under a token budget ------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        chunks = self._micro_batches(model, inputs, num_items_in_batch)
        if chunks is None:
            return super().training_step(model, inputs, num_items_in_batch)
        total = None
        for i, chunk in enumerate(chunks):
            # Under DDP, all-reduce once per step (after the last micro-batch), not once per micro-batch.
            last = i == len(chunks) - 1
            sync = nullcontext() if last or self.accelerator.num_processes == 1 else self.accelerator.no_sync(model)
            with sync:
                loss = super().training_step(model, chunk, num_items_in_batch)
            total = loss if total is None else total + loss
        return total

    def attention_kernels(self, inputs):
        """The attention kernels a forward over `inputs` runs with: short bf16 batches on CPU take torch's math
        kernel, faster there than its fused one (`hardware.attention_kernels`; models loaded by tunelab run
        `tunelab_sdpa`, whose grouped path never reaches SDPA for such batches); the compute dtype is bf16 under
        bf16 autocast or with bf16 weights. The backward follows the forward's choice."""
        ids = inputs.get("input_ids") if isinstance(inputs, dict) else None
        if ids is None or ids.dim() != 2:
            return nullcontext()
        bf16 = self.args.bf16 or getattr(self.model, "dtype", None) == torch.bfloat16
        return attention_kernels(self.args.device.type, torch.bfloat16 if bf16 else torch.float32, ids.shape[1])

    def _micro_batches(self, model, inputs, num_items_in_batch):
        """Row chunks of a too-large batch, or None. Only where each chunk's loss is sum / global count,
        so the chunk losses (and gradients) add up exactly to the whole batch's, and only where several
        forward/backward passes inside one step are safe (`micro_batches_off`)."""
        if not self.token_budget or self.micro_batches_off(inputs) is not None:
            return None
        if (num_items_in_batch is None or not self.model_accepts_loss_kwargs
                or not self._use_selective_logits(model.train(), inputs)):
            return None
        if inputs["input_ids"].numel() <= self.token_budget or inputs["input_ids"].shape[0] < 2:
            return None
        return split_by_token_budget(inputs, self.token_budget)

    def micro_batches_off(self, inputs: dict | None = None) -> str | None:
        """Why token-budget micro-batches must not run here (None: they may); each reason is logged once.
        - DeepSpeed: its engine steps the optimizer on every backward made while `sync_gradients` is set, so
          each chunk of a step's last batch would take an optimizer step;
        - FSDP (and DeepSpeed ZeRO-3): every forward gathers the sharded weights collectively, and ranks whose
          batches split into different numbers of chunks would make different numbers of gathers (a hang);
        - context/sequence parallelism, or a batch that brings `shift_labels`: the sequence is split across
          ranks and the labels come pre-shifted; row chunks would cut what that plan expects whole."""
        parallel = getattr(self.accelerator, "parallelism_config", None)
        if self.is_deepspeed_enabled:
            reason = "DeepSpeed (its engine steps on every synchronised backward)"
        elif self.is_fsdp_enabled or _fsdp_managed(self.model):
            reason = "FSDP (ranks could split into different numbers of chunks and desynchronise their gathers)"
        elif parallel is not None and (getattr(parallel, "cp_enabled", False) or getattr(parallel, "sp_enabled", False)):
            reason = "context/sequence parallelism (the sequence is sharded across ranks)"
        elif inputs is not None and "shift_labels" in inputs:
            reason = "a batch with shift_labels (pre-shifted labels, as context parallelism brings)"
        else:
            return None
        if reason not in self._plain_path_said:
            self._plain_path_said.add(reason)
            self.notice(f"token-budget micro-batches off under {reason}: each batch runs as one forward/backward")
        return reason

    # -- loss -----------------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Only a loss-only evaluation may skip logits; compute_metrics/predict need the full ones.
        self._loss_only_prediction = prediction_loss_only
        self._predicting = True
        try:
            with self.attention_kernels(inputs):  # predictions without labels never reach compute_loss
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self._loss_only_prediction = self._predicting = False

    def _get_num_items_in_batch(self, *args, **kwargs):
        # Evaluation: each batch's loss is its own token mean. Normalised by the label count gathered over all
        # ranks (and rescaled by the process count, as for training), a rank whose batch holds more tokens would
        # weigh more in the eval loss the Trainer averages over rows (transformers does that under DDP).
        if self._predicting:
            return None
        return super()._get_num_items_in_batch(*args, **kwargs)

    def _use_selective_logits(self, model, inputs) -> bool:
        labels = inputs.get("labels")
        return (
            self.selective_logits
            and self._model_keeps_logits
            and getattr(self, "_loss_shifts_labels", False)
            and self.compute_loss_func is None
            and self.label_smoother is None
            and not self.args.use_liger_kernel  # Liger fuses head + loss itself
            and torch.is_tensor(labels) and labels.dim() == 2
            and "shift_labels" not in inputs  # pre-shifted labels (context parallelism): transformers' own loss
            and "input_ids" in inputs and inputs["input_ids"].shape == labels.shape
            and (model.training or self._loss_only_prediction)
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Every forward with labels comes through here (training steps, evaluation, the time estimate, lab explain's
        # per-example losses), so every one of them runs the same attention kernels.
        with self.attention_kernels(inputs):
            return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _compute_loss(self, model, inputs, return_outputs, num_items_in_batch):
        labels = inputs.get("labels")
        if self.head_logits is not None and torch.is_tensor(labels) and labels.dim() == 1:
            return self._classification_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self._use_selective_logits(model, inputs):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        keep = supervised_positions(labels)
        fused = self._fused_head(model, inputs, keep)
        if fused is not None:
            backbone, head = fused
            targets = kept_targets(labels, keep)
            # The backbone is called past the model's forward, which accelerate wraps in the run's autocast (bf16/fp16
            # mixed precision): enter it here, so both paths compute in the same precision.
            with self.accelerator.autocast():
                hidden = backbone(**inputs).last_hidden_state[keep]
                total = linear_cross_entropy(hidden, head.weight, head.bias, targets)
            loss = self._rescale_for_devices(token_mean(total, targets.numel(), num_items_in_batch), num_items_in_batch)
            return (loss, CausalLMOutputWithPast(loss=loss)) if return_outputs else loss
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs.logits
        if logits.dim() == 3:  # a model that ignored the mask: score its full logits the same way
            loss = causal_lm_loss(logits, labels, num_items_in_batch=num_items_in_batch)
        else:
            loss = causal_lm_loss(logits, labels, keep=keep, num_items_in_batch=num_items_in_batch)
        loss = self._rescale_for_devices(loss, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _classification_loss(self, model, inputs, return_outputs, num_items_in_batch):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = self.head_logits(outputs.logits)
        total = torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing,
                                                  reduction="sum")
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # The Trainer does not divide by the accumulation steps then: normalise by the global label count.
            loss = self._rescale_for_devices(total / num_items_in_batch, num_items_in_batch)
        else:
            loss = total / max(labels.numel(), 1)
        return (loss, SequenceClassifierOutput(loss=loss, logits=logits)) if return_outputs else loss

    def _rescale_for_devices(self, loss, num_items_in_batch):
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # Same rescaling as Trainer.compute_loss: DDP averages gradients, the loss was divided by the global count.
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss

    def _fused_head(self, model, inputs, keep):
        """(backbone, lm_head) when head + loss may run fused for this model, else None. Decided once per model:
        the model must be unwrapped (DDP/FSDP/DeepSpeed hooks live in the wrapper's forward), its head a plain
        Linear, and head(backbone(x)) must equal the model's own logits (no softcapping or logit scaling).
        After a resume the checkpoint's decision is taken as is: re-checking on another batch with other
        weights could come out differently and switch paths halfway through a run."""
        if not self.fused_head_loss or self.accelerator.unwrap_model(model) is not model:
            return None
        if id(model) not in self._fused_heads:
            if self._resumed_fused is not None:
                choice = _backbone_and_head(model) if self._resumed_fused else None
                if self._resumed_fused and choice is None:
                    log.warning("the checkpoint ran the fused LM head + loss, but this model's head cannot; "
                                "continuing unfused (losses may differ slightly from the first half of the run)")
            elif not keep.any():
                return None  # nothing to compare on; decide on a batch with labels
            else:
                with self.accelerator.autocast():  # as the model's own forward runs (accelerate wraps it in autocast)
                    choice = _verified_backbone_and_head(model, inputs, keep)
            self._fused_heads[id(model)] = choice
            self._fused_decision = choice is not None
        return self._fused_heads[id(model)]

    # -- evaluation -------------------------------------------------------------------
    def evaluate(self, *args, **kwargs):
        # Callbacks may add metrics in `on_evaluate` (e.g. ROUGE from generations, training/generation_eval.py)
        # after Trainer.evaluate has logged; log those keys too so they reach history.jsonl and trainer_state.json.
        with self._torch_settings():
            metrics = super().evaluate(*args, **kwargs)
        logged = self.state.log_history[-1] if self.state.log_history else {}
        added = {k: v for k, v in metrics.items() if k not in logged and isinstance(v, (int, float))}
        if added:
            self.log(added)
        return metrics


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _last_complete(folder: Path) -> Path | None:
    complete = sorted((checkpoint_step(p), p) for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                      if p.is_dir() and checkpoint_problem(p) is None)
    return complete[-1][1] if complete else None


def _fsdp_managed(model) -> bool:
    """A model sharded by FSDP at load time (transformers' distributed loading), which accelerate did not wrap."""
    try:
        from transformers.distributed.fsdp import is_fsdp_managed_module

        return bool(is_fsdp_managed_module(model))
    except Exception:  # noqa: BLE001 - an older transformers or no torch.distributed: not FSDP-managed
        return False


def _sized(dataset) -> bool:
    try:
        return dataset is not None and len(dataset) > 0
    except TypeError:
        return False


def _accepts_logits_to_keep(model) -> bool:
    """True when the underlying transformers model takes `logits_to_keep` (masked form is 5.x API)."""
    inner = model
    while hasattr(inner, "get_base_model") or hasattr(inner, "module"):
        inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner.module
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


# Config fields by which some architectures change logits after the head (Gemma 2/3, Cohere, Granite).
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _backbone_and_head(model):
    """(backbone, head) when the model is built like `head(backbone(...).last_hidden_state)` with a plain
    Linear head and no known logit transform, else None. Structure only; see `_verified_backbone_and_head`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    backbone = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    if type(head) is not torch.nn.Linear or not isinstance(backbone, torch.nn.Module) or backbone is inner:
        return None
    config = getattr(inner, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None  # the numeric check would catch these too, unless logits happen to be small
    return backbone, head


def _same_logits(expected: torch.Tensor, got: torch.Tensor) -> bool:
    """The two paths' logits agree up to rounding: 1e-3 in fp32; in bf16/fp16 (8/11 mantissa bits) a GEMM of another
    shape can land one or two units of the last place away, 0.125 at a logit of 20, so 1e-2 there. A structural
    difference (a scale, softcapping, a missing norm) moves the large logits by far more than either."""
    if expected.shape != got.shape:
        return False
    low = {torch.bfloat16, torch.float16}
    tol = 1e-2 if expected.dtype in low or got.dtype in low else 1e-3
    return torch.allclose(expected.float(), got.float(), rtol=tol, atol=tol)


def _verified_backbone_and_head(model, inputs, keep):
    """(backbone, head) if the causal LM's logits are exactly `head(backbone(...).last_hidden_state)`, else None."""
    parts = _backbone_and_head(model)
    if parts is None:
        return None
    backbone, head = parts
    rows = keep.any(1).nonzero().flatten()[:2]  # two rows with labels are enough to compare
    # ... and their first columns up to a few labelled positions: a causal LM's logits at a position do not depend
    # on later columns, so the check costs a short forward, not two over the batch's full width.
    width = min(keep.shape[1], int(keep[rows].any(0).nonzero()[0]) + 16)
    sample = {}
    for k, v in inputs.items():
        if torch.is_tensor(v) and v.shape[:1] == keep.shape[:1]:
            v = v[rows]
            if v.dim() >= 2 and v.shape[1] == keep.shape[1]:
                v = v[:, :width]
        sample[k] = v
    keep = keep[:, :width]
    was_training = model.training
    model.eval()  # dropout off, so both paths see the same network
    try:
        with torch.no_grad():
            expected = model(**sample, logits_to_keep=keep[rows]).logits
            hidden = backbone(**sample).last_hidden_state[keep[rows]]
            got = head(hidden)
        same = _same_logits(expected, got)
    except (TypeError, ValueError, RuntimeError, AttributeError):
        same = False
    finally:
        model.train(was_training)
    return (backbone, head) if same else None
