"""Encoder classification speed: the plain Hugging Face `Trainer` text-classification recipe vs tunelab's
default (examples/classify_banking77.yaml), on the same banking77 rows, one epoch each.

The path CPU users train most: a small encoder (packaged all-MiniLM-L6-v2) and a classification head.
Each setting runs in its own subprocess (its own peak RSS) and trains on the same rows; every setting is then
scored the same plain way (accuracy on the same held-out rows, fp32 forward).

  plain       the tutorial recipe: AutoModelForSequenceClassification, tokenizer truncation, the Trainer's
              default dynamic-padding collator, fp32, batch 32
  plain_bf16  the same + `bf16=True` (autocast), what a practitioner tries next on a bf16 CPU
  tunelab     `tunelab.train` on examples/classify_banking77.yaml (its defaults: length buckets, dtype auto,
              thread choice, mean pooling; its linear-probe head init counts in the wall time, not in tokens/s)

    HF_HUB_OFFLINE=1 python bench/bench_encoder_speed.py                 # 2,000 train / 500 eval rows
    HF_HUB_OFFLINE=1 python bench/bench_encoder_speed.py --train 500 --json bench/results/encoder_speed.json

Prints real (non-pad) tokens/s of the training loop, wall time including model load, peak RSS, accuracy, ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host import StealMeter, steal_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNELAB_SHARED_DATA", REPO.parent / "shared" / "data"))
TRAIN_CSV = DATA / "classification_banking77" / "train.csv"
SETTINGS = ("plain", "plain_bf16", "tunelab")
MAX_LENGTH, BATCH, LR = 64, 32, 1e-4


def rows(n_train: int, n_eval: int):
    import pandas as pd

    frame = pd.read_csv(TRAIN_CSV).sample(frac=1.0, random_state=0).reset_index(drop=True)
    return frame.iloc[:n_train], frame.iloc[n_train : n_train + n_eval]


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def accuracy(model, tokenizer, frame, labels: list[str]) -> float:
    import torch

    model = model.float().eval()
    index = {label: i for i, label in enumerate(labels)}
    right = 0
    with torch.inference_mode():
        for b in range(0, len(frame), 64):
            part = frame.iloc[b : b + 64]
            enc = tokenizer(list(part["text"]), truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1).tolist()
            right += sum(p == index[c] for p, c in zip(pred, part["category"]))
    return right / len(frame)


def run_plain(name: str, train, evals) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from tunelab.models.registry import resolve_model

    start_wall = time.perf_counter()
    folder = resolve_model("all-minilm-l6-v2").path
    labels = sorted(train["category"].unique())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(labels))
    index = {label: i for i, label in enumerate(labels)}
    enc = tokenizer(list(train["text"]), truncation=True, max_length=MAX_LENGTH)
    dataset = [{"input_ids": ids, "attention_mask": m, "labels": index[c]}
               for ids, m, c in zip(enc["input_ids"], enc["attention_mask"], train["category"])]
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, num_train_epochs=1,
                             learning_rate=LR, logging_steps=10 ** 6, save_strategy="no", report_to=[],
                             disable_tqdm=True, seed=0, use_cpu=not torch.cuda.is_available(),
                             bf16=name == "plain_bf16", dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    wall = time.perf_counter() - start_wall
    rss = _peak_rss_gb()
    real = sum(len(ids) for ids in enc["input_ids"])
    return {"setting": name, "real_tokens": real, "seconds": seconds, "tokens_per_s": real / seconds,
            "wall_s": wall, "peak_rss_gb": rss, "accuracy": accuracy(model, tokenizer, evals, labels),
            "threads": torch.get_num_threads()}


def run_tunelab(train, evals) -> dict:
    import torch

    import tunelab
    from tunelab.config import load_config

    work = Path(tempfile.mkdtemp())
    train.to_csv(work / "train.csv", index=False)
    evals.to_csv(work / "eval.csv", index=False)
    config = load_config(REPO / "examples" / "classify_banking77.yaml", overrides={
        "data.train_path": str(work / "train.csv"), "data.eval_path": str(work / "eval.csv"), "train.epochs": 1,
        "train.output_dir": str(work / "run"), "task.baseline": False, "task.calibrate": False,
        "train.estimate_steps": 0,
        # Like the plain recipe: no evaluation or checkpoint inside the timed loop (tunelab's default evaluates
        # ~4 times a run; the eval before/after training and the probe count in the wall time).
        "train.eval_steps": 10 ** 6, "train.save_steps": 10 ** 6})
    start_wall = time.perf_counter()
    result = tunelab.train(config)
    wall = time.perf_counter() - start_wall
    rss = _peak_rss_gb()
    seconds = result.metrics["train_runtime_s"]
    run = tunelab.load(result.run_dir)
    labels = run.task.classes
    real = sum(len(ids) for ids in run.tokenizer(list(train["text"]), truncation=True, max_length=MAX_LENGTH)["input_ids"])
    return {"setting": "tunelab", "real_tokens": real, "seconds": seconds, "tokens_per_s": real / seconds,
            "wall_s": wall, "peak_rss_gb": rss, "accuracy": accuracy(run.model, run.tokenizer, evals, labels),
            "threads": torch.get_num_threads(), "dtype": config.model.dtype}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--only", nargs="*", choices=SETTINGS)
    p.add_argument("--json")
    p.add_argument("--_one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not TRAIN_CSV.exists():
        sys.exit(f"data not found: {TRAIN_CSV} (set TUNELAB_SHARED_DATA)")
    if args._one:
        train, evals = rows(args.train, args.eval)
        result = run_tunelab(train, evals) if args._one == "tunelab" else run_plain(args._one, train, evals)
        print(json.dumps(result))
        return

    from tunelab.models.hardware import cpu_flags

    results = []
    for name in args.only or SETTINGS:
        cmd = [sys.executable, __file__, "--_one", name, "--train", str(args.train), "--eval", str(args.eval)]
        with StealMeter() as steal:
            out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
        results.append({**json.loads(out.stdout.strip().splitlines()[-1]), "host_steal_pct": steal.pct})
        r = results[-1]
        print(f"{name:12s} {r['tokens_per_s']:8.0f} real tok/s  train {r['seconds']:6.1f}s  wall {r['wall_s']:6.1f}s  "
              f"peak RSS {r['peak_rss_gb']:.2f} GB  accuracy {r['accuracy']:.4f}  {steal_text(steal.pct)}", flush=True)
    print(f"CPU flags: {' '.join(cpu_flags()) or 'none of avx2/avx512/bf16/amx'}; {os.cpu_count()} logical cores; "
          f"{args.train} train rows, 1 epoch, batch {BATCH}, max_length {MAX_LENGTH}")
    by = {r["setting"]: r for r in results}
    if "tunelab" in by:
        for name in ("plain", "plain_bf16"):
            if name in by:
                print(f"tunelab / {name}: {by['tunelab']['tokens_per_s'] / by[name]['tokens_per_s']:.2f}x training "
                      f"tokens/s, {by[name]['wall_s'] / by['tunelab']['wall_s']:.2f}x wall")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
