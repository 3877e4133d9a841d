"""Side-by-side training speed: tutorial recipe vs best plain transformers settings vs tunelab's default.

One run, one model (packaged SmolLM2-135M-Instruct), one data set (instructions_en rendered with
the chat template, loss on answers only). Each setting trains in its own subprocess (so peak RSS is
its own) on the same examples for one epoch, then the same plain evaluation computes the
token-weighted eval loss on the same held-out examples.

    HF_HUB_OFFLINE=1 python bench/bench_train_speed.py            # default: 48 train / 24 eval examples
    HF_HUB_OFFLINE=1 python bench/bench_train_speed.py --train 16 --eval 16 --only lora

Prints real (non-pad) tokens/s, peak RSS while training, eval loss and the speed ratios; `--json` writes them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import StealMeter, steal_text  # noqa: E402

DATA = Path(os.environ.get("TUNELAB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# name -> (description, lora?, trainer kind, padding, sampling strategy, autocast bf16?)
SETTINGS = {
    "tutorial": ("tutorial: pad to max_length, fp32, random order", True, "plain", "max_length", "random", False),
    "plain_dynamic": ("plain: dynamic padding, fp32", True, "plain", "dynamic", "random", False),
    "plain_best": ("plain best: dynamic pad + group_by_length + matmul 'medium'", True, "plain", "dynamic", "group_by_length", False),
    "plain_best_bf16": ("plain best + bf16 autocast", True, "plain", "dynamic", "group_by_length", True),
    "tunelab": ("tunelab default (LoRA)", True, "tunelab", "dynamic", "random", False),
    "tunelab_compiled": ("tunelab LoRA + compiled blocks (steady state)", True, "tunelab", "dynamic", "random", False),
    "full_plain_best": ("full FT, plain best", False, "plain", "dynamic", "group_by_length", False),
    "full_tunelab": ("full FT, tunelab", False, "tunelab", "dynamic", "random", False),
}


def load_examples(n_train: int, n_eval: int, max_length: int, seed: int = 0):
    """Rendered + tokenized SFT examples from instructions_en; a fixed random split."""
    import random

    import pandas as pd

    from tunelab.config.schema import RunConfig
    from tunelab.models.loading import load_tokenizer
    from tunelab.tasks.registry import get_task

    path = DATA / "instructions_en" / "user_oriented_instructions.jsonl"
    if not path.exists():
        sys.exit(f"data not found: {path} (set TUNELAB_SHARED_DATA)")
    rows = []
    for line in path.open(encoding="utf-8"):
        r = json.loads(line)
        for inst in r["instances"]:
            q = r["instruction"] + ("\n\n" + inst["input"] if inst["input"].strip() else "")
            rows.append({"question": q, "answer": inst["output"]})
    random.Random(seed).shuffle(rows)
    config = RunConfig(task={"name": "sft"})
    tokenizer = load_tokenizer(config.model)
    examples = get_task("sft")(config).encode(pd.DataFrame(rows), tokenizer, max_length)
    return tokenizer, examples[:n_train], examples[n_train : n_train + n_eval]


def eval_loss(model, examples, pad_id) -> float:
    """Token-weighted mean next-token loss, computed the plain way for every setting."""
    import torch

    from tunelab.data.collate import CausalLMCollator

    model.eval()
    ordered = sorted(examples, key=lambda e: len(e["input_ids"]))
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(0, len(ordered), 8):
            batch = CausalLMCollator(pad_id)(ordered[b : b + 8])
            n = int(batch["labels"][:, 1:].ne(-100).sum())
            total += float(model(**batch).loss) * n
            count += n
    return total / count


def run_setting(name: str, args) -> dict:
    import torch
    from transformers import Trainer, TrainingArguments

    from tunelab.config.schema import LoraConfig, ModelConfig
    from tunelab.models.hardware import detect_hardware
    from tunelab.models.loading import load_model
    from tunelab.models.peft_setup import apply_lora
    from tunelab.data.collate import CausalLMCollator
    from tunelab.training.trainer import TunelabTrainer

    _, use_lora, kind, padding, sampling, bf16 = SETTINGS[name]
    tokenizer, train, evals = load_examples(args.train, args.eval, args.max_length)
    # Plain settings: fp32 weights (bf16 autocast where the setting says so). tunelab: its default dtype "auto",
    # as `tunelab train` runs: bf16 autocast where bf16 is fast, and a LoRA run's frozen base stored in bf16.
    tunelab = kind == "tunelab"
    model_cfg = ModelConfig(name_or_path=args.model, dtype="auto" if tunelab else "float32")
    hardware = detect_hardware(model_cfg)
    bf16 = bf16 or (tunelab and hardware.dtype == torch.bfloat16)
    # As recorded in bench/README.md: matmul 'medium' (a plain torch option) for all but the tutorial. Detection
    # no longer sets it, and TunelabTrainer keeps the process's setting unless given matmul_precision.
    torch.set_float32_matmul_precision("highest" if name == "tutorial" else "medium")
    model = load_model(model_cfg, "causal_lm", hardware, tokenizer=tokenizer, frozen_base=use_lora and tunelab)
    if use_lora:
        # Same adapter everywhere (tunelab's default: r16, alpha 32, dropout 0, all linear layers), so the
        # ratios measure the training recipe, not adapter settings.
        model = apply_lora(model, LoraConfig(dropout=args.lora_dropout), "causal_lm")
    collator = CausalLMCollator(tokenizer.pad_token_id, pad_to_multiple_of=args.max_length if padding == "max_length" else None)
    targs = TrainingArguments(
        output_dir=str(Path(args.workdir) / name), per_device_train_batch_size=args.batch_size, num_train_epochs=1,
        learning_rate=2e-4 if use_lora else 2e-5, lr_scheduler_type="constant", logging_steps=10**6,
        save_strategy="no", report_to=[], disable_tqdm=True, seed=0, use_cpu=not torch.cuda.is_available(),
        bf16=bf16, train_sampling_strategy=sampling, dataloader_num_workers=0,
    )
    cls = TunelabTrainer if kind == "tunelab" else Trainer
    trainer = cls(model=model, args=targs, data_collator=collator, train_dataset=train, processing_class=tokenizer)
    compile_s = None
    if name.endswith("_compiled"):  # train.compile_blocks=true; compiled before the clock starts, timed apart
        compile_s = _compile_and_warm_up(trainer, train)
    real_tokens = sum(len(e["input_ids"]) for e in train)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    train_rss = _peak_rss_gb()  # before the evaluation below, which builds full logits for every setting
    loss = eval_loss(model, evals, tokenizer.pad_token_id)
    return {"setting": name, "description": SETTINGS[name][0], "real_tokens": real_tokens, "seconds": seconds,
            "tokens_per_s": real_tokens / seconds, "peak_rss_gb": train_rss, "eval_loss": loss,
            "threads": torch.get_num_threads(), "dtype": "bfloat16" if bf16 else "float32", "compile_s": compile_s}


def _compile_and_warm_up(trainer, train) -> float:
    """Compile the repeated blocks and run a forward + backward on a short and a long batch of the training rows
    (the graph variants training meets), gradients dropped: the compile time, so the timed epoch is steady state."""
    from tunelab.training.compile import compile_repeated_blocks

    start = time.perf_counter()
    compile_repeated_blocks(trainer.model)
    ordered = sorted(train, key=lambda e: len(e["input_ids"]))
    trainer.model.train()
    for rows in (ordered[:2], ordered[-2:]):
        batch = trainer.data_collator(rows)
        with trainer.accelerator.autocast():
            trainer.compute_loss(trainer.model, batch).backward()
    trainer.model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def _peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 ** 2 if sys.platform != "darwin" else 1024 ** 3)


def default_settings() -> list[str]:
    import torch

    from tunelab.models.hardware import cpu_has_fast_bf16

    names = ["tutorial", "plain_dynamic", "plain_best", "tunelab", "tunelab_compiled", "full_plain_best", "full_tunelab"]
    if torch.cuda.is_available() or cpu_has_fast_bf16():
        names.insert(3, "plain_best_bf16")  # emulated bf16 is ~40x slower than fp32 on AVX2-only CPUs
    return names


def print_table(results: list[dict]) -> None:
    by = {r["setting"]: r for r in results}
    print(f"\n{'setting':62s} {'real tok/s':>10s} {'peak RSS':>9s} {'eval loss':>9s} {'steal':>6s}")
    for r in results:
        compiled = f"  (compile + warm-up {r['compile_s']:.0f} s, not in tok/s)" if r.get("compile_s") else ""
        steal = "n/a" if r.get("host_steal_pct") is None else f"{r['host_steal_pct']:.1f}%"
        print(f"{r['description']:62s} {r['tokens_per_s']:10.1f} {r['peak_rss_gb']:7.2f}GB {r['eval_loss']:9.4f} "
              f"{steal:>6s}{compiled}")
    plain = [by[n] for n in ("plain_dynamic", "plain_best", "plain_best_bf16") if n in by]
    if "tunelab" in by:
        t = by["tunelab"]["tokens_per_s"]
        if "tutorial" in by:
            print(f"tunelab / tutorial              : {t / by['tutorial']['tokens_per_s']:.2f}x")
        if plain:
            best = max(plain, key=lambda r: r["tokens_per_s"])
            print(f"tunelab / best plain ({best['setting']}): {t / best['tokens_per_s']:.2f}x")
            if "tunelab_compiled" in by:
                print(f"tunelab compiled / best plain   : {by['tunelab_compiled']['tokens_per_s'] / best['tokens_per_s']:.2f}x"
                      " (steady state)")
    if "full_tunelab" in by and "full_plain_best" in by:
        print(f"full FT tunelab / plain best    : "
              f"{by['full_tunelab']['tokens_per_s'] / by['full_plain_best']['tokens_per_s']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--train", type=int, default=48, help="training examples (one epoch)")
    p.add_argument("--eval", type=int, default=24, help="held-out examples for the eval loss")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lora-dropout", type=float, default=0.0, help="LoRA dropout for every LoRA setting")
    p.add_argument("--only", nargs="*", help=f"settings to run, from {list(SETTINGS)}")
    p.add_argument("--workdir", default="/tmp/tunelab-bench")
    p.add_argument("--json", help="write results here")
    p.add_argument("--_one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._one:  # child process: one setting, result as JSON on the last line
        print(json.dumps(run_setting(args._one, args)))
        return
    from tunelab.models.hardware import cpu_flags, cpu_has_fast_bf16

    print(f"CPU flags: {' '.join(cpu_flags()) or 'none of avx2/avx512/bf16/amx'}; fast bf16: {cpu_has_fast_bf16()}",
          flush=True)
    results = []
    for name in args.only or default_settings():
        cmd = [sys.executable, __file__, "--_one", name] + sys.argv[1:]
        with StealMeter() as steal:
            done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{name}: failed\n{done.stderr[-3000:]}")
            continue
        results.append({**json.loads(done.stdout.strip().splitlines()[-1]), "host_steal_pct": steal.pct})
        r = results[-1]
        print(f"{name:18s} {r['tokens_per_s']:8.1f} real tok/s  {r['seconds']:7.1f}s  RSS {r['peak_rss_gb']:.2f}GB  "
              f"eval loss {r['eval_loss']:.4f}  {r['threads']} thread(s), {r['dtype']}, {steal_text(steal.pct)}",
              flush=True)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
