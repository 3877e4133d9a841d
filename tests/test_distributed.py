"""Scaling out through the ecosystem's launchers (issue #14), on CPU: DDP over gloo with `accelerate launch` and
`torchrun`, two nodes simulated on loopback, the length-bucketed sampler's sharding, and the guards that turn
tunelab's token-budget micro-batches off where a distributed engine would make them wrong.

The runs use the tiny random Llama in fp32 with a fixed seed (no dropout anywhere: Llama's attention dropout is 0,
tunelab's LoRA has none by default). One process at batch 8 and two at batch 4 each train on the same rows in each
step (`sampler.ShardedBuckets`) with the same gradient (the loss is normalised by the label count gathered over the
ranks), so their per-step losses may differ only by float summation order.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import tiny_sft_raw

BIN = Path(sys.executable).parent  # the venv's accelerate / torchrun
LAUNCH_TIMEOUT = 240  # seconds per launch: a desynchronised collective fails the test instead of hanging CI
TRAIN_LOSS_TOL = 1e-4
"""Per-step train loss, 1 process (batch 8) vs 2 (batch 4 each), absolute. Measured: <= 2e-6 (fp32 summation
order). A step on other rows differs by ~1e-2 here (a 37-row epoch whose tail bucket was dealt differently), and
the loss falls by ~0.06 over the run, so this separates "same training" from "different batches"."""
EVAL_LOSS_TOL = 3e-3
"""Final eval loss, absolute. Not as tight: the Trainer's eval loss averages each batch's token mean, weighted by
rows; 1 process evaluates the 8 held-out rows in one batch, 2 processes in 4 + 4, so tokens weigh differently
(measured 1.0e-3). Before training (every token's loss near ln(vocab)) the two agree to ~1e-5: tolerance 1e-4."""
STEPS, SAVE_EVERY = 6, 3
PROGRESS = re.compile(r"^step (\d+)/\d+  loss ", re.M)


def _config(tiny_llama, folder: Path, batch_size: int) -> Path:
    """48 rows of the shipped QA sample: 40 train (37 examples after truncation: the last bucket of each epoch
    is short, so the tail is exercised), 8 held out."""
    raw = tiny_sft_raw(tiny_llama, folder / "run", dtype="float32", max_steps=STEPS, batch_size=batch_size,
                       save_steps=SAVE_EVERY, eval_steps=SAVE_EVERY, learning_rate=1e-2)
    raw["data"].update(max_rows=48, eval_fraction=0.25)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", TUNELAB_THREADS="1", HF_HUB_OFFLINE="1", MASTER_ADDR="127.0.0.1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def _launch(cwd: Path, *commands: list) -> tuple[str, float]:
    """Start the commands together (one per simulated node), wait for all of them, within LAUNCH_TIMEOUT: on
    timeout every process group is killed and the test fails. Returns (all output, wall seconds)."""
    logs = [cwd / f"launch-{i}.log" for i in range(len(commands))]
    started = time.perf_counter()
    procs = []
    for command, log in zip(commands, logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen([str(c) for c in command], cwd=cwd, env=_env(), stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, LAUNCH_TIMEOUT - (time.perf_counter() - started)))
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher's own session: it and its workers
        pytest.fail(f"launch did not finish in {LAUNCH_TIMEOUT} s:\n" + "\n".join(l.read_text()[-3000:] for l in logs))
    seconds = time.perf_counter() - started
    output = "\n".join(log.read_text(errors="replace") for log in logs)
    failed = [p.returncode for p in procs if p.returncode != 0]
    assert not failed, f"exit codes {failed}:\n{output[-6000:]}"
    return output, seconds


def _tunelab(*args) -> list:
    return ["-m", "tunelab.cli.main", "train", *args]


def _history(run: Path) -> tuple[dict[int, float], list[dict]]:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r and not r.get("after_training")]
    assert sorted(steps) == sorted(set(steps)), f"a step logged twice in history.jsonl: {steps}"
    return {r["step"]: r["loss"] for r in rows if "loss" in r and not r.get("after_training")}, rows


def _check_run(run: Path, output: str, steps: range) -> dict:
    """What one multi-process run must leave: one progress line per step, history written once, complete
    checkpoints, predictions for every held-out row written once, metrics."""
    from tunelab.training.rundir import checkpoint_problem

    shown = Counter(int(s) for s in PROGRESS.findall(output))
    assert shown == Counter(steps), f"one progress line per step (main process only), got {dict(shown)}"
    losses, _ = _history(run)
    assert sorted(losses) == list(range(1, steps.stop))
    for step in range(SAVE_EVERY, steps.stop, SAVE_EVERY):
        assert checkpoint_problem(run / "checkpoints" / f"checkpoint-{step}") is None
    assert not list(run.rglob(".saving*")), "a staging folder was left behind"
    predictions = [json.loads(line) for line in (run / "eval_predictions.jsonl").read_text().splitlines()]
    held_out = json.loads((run / "eval_rows.json").read_text())["rows"]
    assert len(held_out) == 8 and sorted(p["row"] for p in predictions) == sorted(held_out)  # each row once
    assert (run / "final" / "adapter_config.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_steps"] == steps.stop - 1 and metrics["train_examples"] == 37
    return {"losses": losses, "eval_loss": metrics["eval_loss"], "eval_before": metrics["eval_before_loss"]}


@pytest.fixture(scope="module")
def single(tiny_llama, tmp_path_factory) -> dict:
    """The reference: one process, batch 8."""
    folder = tmp_path_factory.mktemp("single")
    output, seconds = _launch(folder, [sys.executable, *_tunelab(_config(tiny_llama, folder, batch_size=8))])
    result = _check_run(folder / "run", output, range(1, STEPS + 1))
    print(f"\n1 process: {seconds:.1f} s, losses {result['losses']}, eval loss {result['eval_loss']:.6f}")
    return result


def _assert_same_training(got: dict, single: dict, steps) -> None:
    for step in steps:
        assert got["losses"][step] == pytest.approx(single["losses"][step], abs=TRAIN_LOSS_TOL), f"step {step}"
    assert got["eval_before"] == pytest.approx(single["eval_before"], abs=1e-4)
    assert single["losses"][1] - single["losses"][STEPS] > 20 * TRAIN_LOSS_TOL  # it trained: the check means something


def test_accelerate_then_torchrun_resume_match_one_process(tiny_llama, tmp_path, single):
    """`accelerate launch` (2 processes, gloo) trains the first half; `torchrun --nproc-per-node 2 ... --resume`
    continues it under DDP. Per-step losses and the final eval loss match the one-process run."""
    cfg = _config(tiny_llama, tmp_path, batch_size=4)
    run = tmp_path / "run"
    # `--multi_gpu` is accelerate's torchrun launcher; with no GPU the processes train on CPU over gloo.
    # (`accelerate launch --cpu --num_processes 2` starts ONE process: accelerate's multi-CPU mode needs mpirun.)
    output, first = _launch(tmp_path, [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", 2,
                                       "--num_machines", 1, "--mixed_precision", "no", "--dynamo_backend", "no",
                                       "--main_process_port", _free_port(), *_tunelab(cfg, "--max-steps", SAVE_EVERY)])
    half = _check_run(run, output, range(1, SAVE_EVERY + 1))
    _assert_same_training(half, single, range(1, SAVE_EVERY + 1))

    output, second = _launch(tmp_path, [BIN / "torchrun", "--nproc-per-node", 2, "--master-addr", "127.0.0.1",
                                        "--master-port", _free_port(),
                                        *_tunelab(cfg, "--resume", "--output-dir", run, "--max-steps", STEPS)])
    said = " ".join(output.split())  # rich wraps long lines at the pipe's 80 columns
    assert f"resuming {run} from checkpoint-{SAVE_EVERY} (step {SAVE_EVERY})" in said
    whole = _check_run(run, output, range(SAVE_EVERY + 1, STEPS + 1))
    _assert_same_training(whole, single, range(1, STEPS + 1))
    assert whole["eval_loss"] == pytest.approx(single["eval_loss"], abs=EVAL_LOSS_TOL)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["run"]  # one run dir, nothing else
    print(f"\n2 processes: accelerate {first:.1f} s (3 steps) + torchrun --resume {second:.1f} s (3 steps), "
          f"losses {whole['losses']}, eval loss {whole['eval_loss']:.6f}")


def test_two_nodes_on_loopback_match_one_process(tiny_llama, tmp_path, single):
    """Two `torchrun --nnodes 2 --nproc-per-node 1 --node-rank {0,1}` processes, rendezvous on 127.0.0.1, train
    one run together: node 0 (global rank 0) writes the run dir, node 1 prints nothing."""
    cfg = _config(tiny_llama, tmp_path, batch_size=4)
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [[BIN / "torchrun", "--nnodes", 2, "--nproc-per-node", 1, "--node-rank", rank,
              "--rdzv-endpoint", endpoint, *_tunelab(cfg)] for rank in (0, 1)]
    output, seconds = _launch(tmp_path, *nodes)
    assert not PROGRESS.search((tmp_path / "launch-1.log").read_text()), "node 1 printed progress lines"
    got = _check_run(tmp_path / "run", output, range(1, STEPS + 1))
    _assert_same_training(got, single, range(1, STEPS + 1))
    assert got["eval_loss"] == pytest.approx(single["eval_loss"], abs=EVAL_LOSS_TOL)
    print(f"\n2 nodes x 1 process: {seconds:.1f} s, losses {got['losses']}, eval loss {got['eval_loss']:.6f}")


# -- the sampler's sharding, as accelerate deals it out ------------------------------------------------------
@pytest.mark.parametrize("rows, processes", [(40, 2), (37, 2), (33, 2), (29, 3), (9, 2)])
def test_bucket_shards_give_every_example_once_per_epoch_across_ranks(rows, processes):
    """accelerate's own prepare_data_loader (what Accelerator.prepare runs in each rank) over ShardedBuckets:
    per epoch every example once across the ranks (no even_batches top-up), the same number of batches on
    every rank, and each step's rows are one bucket, the batch one process would see at batch processes x 4."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from tunelab.training.sampler import LengthBucketSampler, ShardedBuckets

    per_device = 4
    lengths = [int(x) for x in torch.randint(5, 300, (rows,), generator=torch.Generator().manual_seed(rows))]
    for epoch in (0, 1):
        per_rank = []
        for rank in range(processes):
            buckets = LengthBucketSampler(lengths, per_device * processes, seed=11)
            loader = prepare_data_loader(DataLoader(list(range(rows)), batch_sampler=ShardedBuckets(buckets, processes),
                                                    collate_fn=list), num_processes=processes, process_index=rank,
                                         put_on_device=False)
            loader.set_epoch(epoch)
            per_rank.append(list(loader))
        seen = Counter(i for batches in per_rank for batch in batches for i in batch)
        assert seen == Counter(range(rows)), f"epoch {epoch}: every example exactly once"
        assert len({len(batches) for batches in per_rank}) == 1, "ranks must take the same number of steps"
        reference = LengthBucketSampler(lengths, per_device * processes, seed=11)
        reference.set_epoch(epoch)
        expected = ShardedBuckets(reference, processes).global_batches()
        for step, parts in enumerate(zip(*per_rank)):
            assert sorted(i for part in parts for i in part) == sorted(expected[step])
            assert all(part for part in parts)  # no rank idles
        if rows % (per_device * processes) == 0:  # full buckets only: exactly one process's batches at batch 8
            assert expected == reference.batches()


# -- guards: the plain path where a distributed engine forbids several passes per step -------------------------
def _guard_trainer(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from tunelab.data.collate import CausalLMCollator
    from tunelab.training.trainer import TunelabTrainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).float()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to=[],
                             save_strategy="no", disable_tqdm=True)
    trainer = TunelabTrainer(model=model, args=args, data_collator=CausalLMCollator(0), token_budget=40)
    g = torch.Generator().manual_seed(1)
    rows = [{"input_ids": ids, "labels": [-100] * 4 + ids[4:]}
            for ids in (torch.randint(1, 97, (n,), generator=g).tolist() for n in (20, 18, 15, 12))]
    inputs = trainer.data_collator(rows)
    return trainer, inputs, (inputs["labels"][:, 1:] != -100).sum()


FAKES = {
    "deepspeed": ("DeepSpeed", lambda trainer, inputs, mp: setattr(trainer, "is_deepspeed_enabled", True)),
    "fsdp": ("FSDP", lambda trainer, inputs, mp: setattr(trainer, "is_fsdp_enabled", True)),
    # FSDP2 applied at load time by transformers (accelerate did not wrap the model)
    "fsdp_loaded": ("FSDP", lambda trainer, inputs, mp: setattr(trainer.model, "_is_fsdp_managed_module", True)),
    "context_parallel": ("context/sequence parallelism", lambda trainer, inputs, mp: mp.setattr(
        type(trainer.accelerator), "parallelism_config",
        property(lambda self: SimpleNamespace(cp_enabled=True, sp_enabled=False)))),
    "shift_labels": ("shift_labels", lambda trainer, inputs, mp: inputs.__setitem__(
        "shift_labels", torch.nn.functional.pad(inputs["labels"], (0, 1), value=-100)[:, 1:])),
}


@pytest.mark.parametrize("fake", list(FAKES))
def test_micro_batches_are_off_under_distributed_engines(tmp_path, monkeypatch, fake):
    """A batch over the token budget runs as micro-batches on the plain path; faking DeepSpeed, FSDP (accelerate's
    or transformers' load-time FSDP2), context parallelism or a `shift_labels` batch takes one forward/backward
    per step instead, with one notice line for the whole run."""
    from transformers import Trainer

    trainer, inputs, count = _guard_trainer(tmp_path)
    passes = []
    monkeypatch.setattr(Trainer, "training_step",
                        lambda self, model, batch, n=None: passes.append(batch["input_ids"].shape[0]) or torch.tensor(1.0))
    said = []
    trainer.notice = said.append
    trainer.training_step(trainer.model, inputs, count)
    assert len(passes) >= 2 and sum(passes) == 4 and not said  # control: split into micro-batches, silently
    name, apply = FAKES[fake]
    apply(trainer, inputs, monkeypatch)
    passes.clear()
    for _ in range(3):
        trainer.training_step(trainer.model, inputs, count)
    assert passes == [4, 4, 4]  # the whole batch, one pass per step
    assert len(said) == 1 and name in said[0] and "micro-batches off" in said[0] and "\n" not in said[0]


def test_fsdp_config_on_cpu_is_said_to_run_as_ddp(tmp_path, monkeypatch):
    """accelerate enables FSDP/DeepSpeed only on GPUs; their accelerate config on CPU runs plain DDP: said once."""
    trainer, _, _ = _guard_trainer(tmp_path)
    said = []
    trainer.notice = said.append
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    trainer._say_engines_not_run()
    trainer._say_engines_not_run()
    assert len(said) == 1 and "FSDP" in said[0] and "plain data parallel" in said[0]


def test_steps_per_epoch_count_every_process(monkeypatch):
    """The schedule (warmup from the planned steps) counts WORLD_SIZE processes, each taking a batch per step."""
    from tunelab.models.hardware import Hardware
    from tunelab.training.arguments import data_parallel_size

    cpu = Hardware(device="cpu", dtype=torch.float32, name="CPU")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert data_parallel_size(cpu) == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert data_parallel_size(cpu) == 4


def test_example_accelerate_configs_are_valid_accelerate_configs():
    """examples/accelerate/: each file loads as accelerate's own config (unknown keys raise there), names only
    options `accelerate launch` has, and is what its name says: DDP, FSDP full shard wrapped per decoder layer,
    DeepSpeed ZeRO-2 / ZeRO-3 with a DeepSpeed JSON that leaves tunelab's settings on "auto"."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    folder = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
    options = vars(launch_command_parser().parse_args(["train.py"]))
    kinds = {}
    for path in sorted(folder.glob("*.yaml")):
        config = load_config_from_file(str(path))
        for key in {**(config.fsdp_config or {}), **(config.deepspeed_config or {})}:
            assert key in options, f"{path.name}: {key} is not an `accelerate launch` option"
        kinds[path.stem] = str(config.distributed_type).rsplit(".", 1)[-1]
        if config.deepspeed_config:
            ds = json.loads((folder.parents[1] / config.deepspeed_config["deepspeed_config_file"]).read_text())
            assert ds["zero_optimization"]["stage"] == int(path.stem[-1])
            assert all(ds[k] == "auto" for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"))
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}
    fsdp = load_config_from_file(str(folder / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP" and fsdp["fsdp_reshard_after_forward"] is True
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # wrapped by the model's own _no_split_modules
