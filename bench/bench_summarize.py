"""ROUGE on DialogSum test for the base model and after a short LoRA fine-tune on DialogSum dev, plus generation speed.

    HF_HUB_OFFLINE=1 python bench/bench_summarize.py --count 100 --train-rows 200 --max-steps 40

DialogSum (CC BY-NC-SA) is read from ../shared/data/summarization_dialogsum (not shipped).
ROUGE = F1, best of summary1..3 per dialogue, averaged (tunelab.metrics.rouge). Greedy decoding.
Writes bench/results/summarize.json.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "summarization_dialogsum"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=100, help="DialogSum test dialogues to score (500 = all)")
    p.add_argument("--train-rows", type=int, default=200, help="DialogSum dev rows for the LoRA fine-tune")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--format", default="chat", choices=["chat", "instruction"])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "summarize.json")
    p.add_argument("--skip-base", action="store_true")
    a = p.parse_args()

    from tunelab.config import build_config
    from tunelab.evaluation import evaluate_generation
    from tunelab.io import atomic_write_json
    from tunelab.training.recipe import train

    test, dev = a.data_dir / "dialogsum.test.jsonl", a.data_dir / "dialogsum.dev.jsonl"
    if not test.exists():
        raise SystemExit(f"DialogSum not found in {a.data_dir} (CC BY-NC-SA, not shipped); pass --data-dir")
    work = a.output.parent / "summarize_work"
    raw = {
        "task": {"name": "summarize", "format": a.format, "eval_max_rows": 8},
        "model": {"name_or_path": a.model},
        "data": {"train_path": str(dev), "max_rows": a.train_rows, "eval_fraction": 0.05},
        "train": {"preset": "fast", "max_steps": a.max_steps, "batch_size": a.batch_size, "max_length": a.max_length,
                  "learning_rate": 5e-4, "output_dir": str(work / "run"), "logging_steps": 10, "estimate_steps": 0},
        "generation": {"max_new_tokens": a.max_new_tokens, "batch_size": 8, "do_sample": False},
        "lora": {"r": 16, "alpha": 32},
    }
    config = build_config(raw)
    gen = {"max_new_tokens": a.max_new_tokens, "do_sample": False}
    results: dict = {"count": a.count, "model": a.model, "format": a.format, "max_new_tokens": a.max_new_tokens}

    if not a.skip_base:
        base = evaluate_generation(test, model=a.model, config=config, output_dir=work / "base", max_rows=a.count,
                                   generation=gen)
        results["base"] = _pick(base.metrics)
        print("base:", results["base"], flush=True)

    start = time.perf_counter()
    run = train(config, overwrite=True)
    results["train"] = {"seconds": round(time.perf_counter() - start, 1), "steps": run.metrics.get("train_steps"),
                        "examples": run.metrics.get("train_examples"), "train_loss": run.metrics.get("train_loss"),
                        "eval_loss_before": run.metrics.get("eval_before_loss"), "eval_loss_after": run.metrics.get("eval_loss")}
    print("train:", results["train"], flush=True)
    tuned = evaluate_generation(test, run_dir=run.run_dir, output_dir=work / "tuned", max_rows=a.count, generation=gen)
    results["tuned"] = _pick(tuned.metrics)
    print("tuned:", results["tuned"], flush=True)

    a.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.output, results)
    _table(results)


def _pick(metrics: dict) -> dict:
    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum", "rows", "generated_tokens", "generation_seconds",
            "generation_tokens_per_second")
    return {k: metrics[k] for k in keys}


def _table(results: dict) -> None:
    print(f"\nDialogSum test, {results['count']} dialogues, {results['model']} ({results['format']} prompts)")
    print(f"{'':8} {'R-1':>6} {'R-2':>6} {'R-L':>6} {'R-Lsum':>7} {'gen tok/s':>10}")
    for name in ("base", "tuned"):
        if name in results:
            r = results[name]
            print(f"{name:8} {r['rouge1']:6.4f} {r['rouge2']:6.4f} {r['rougeL']:6.4f} {r['rougeLsum']:7.4f} "
                  f"{r['generation_tokens_per_second']:10.1f}")


if __name__ == "__main__":
    main()
