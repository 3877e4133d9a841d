"""The quality table: tunelab's shipped example configs, trained as shipped, next to the classical baseline
fitted on exactly the same training rows and scored on exactly the same rows.

    bash bench/quality.sh                                        # the default entries below
    HF_HUB_OFFLINE=1 python bench/bench_quality.py --only banking77
    HF_HUB_OFFLINE=1 python bench/bench_quality.py --only hh_rlhf --set train.epochs=1

Entries (each trains in its own subprocess, so its peak RSS is its own):
- banking77: examples/classify_banking77.yaml (MiniLM encoder) -> the 3,080-row test.csv.
- hh_rlhf: examples/preference_hh_rlhf.yaml (MiniLM) -> the run's own held-out rows (the data set has
  one file; the run's seeded, stratified eval split is what neither the model nor the baseline saw).
- banking77_decoder: the banking77 config on SmolLM2-135M-Instruct + LoRA + classification head.
Rows per entry: the fine-tuned model alone, the TF-IDF baseline (the run's own `baseline.npz`), their
50/50 ensemble, and the class prior. Targets (issue #9) are checked for the model alone.
Prints a table and writes bench/results/quality.json (`setting`, `tokens_per_s`, `peak_rss_gb` as in every
bench result file, plus the metrics).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNELAB_SHARED_DATA", ROOT.parent / "shared" / "data"))

ENTRIES = {
    "banking77": {
        "config": "examples/classify_banking77.yaml",
        "test": DATA / "classification_banking77" / "test.csv",
        "overrides": {},
        "targets": {"accuracy": (">=", 0.925), "map@3": (">=", 0.955), "train_minutes": ("<=", 20)},
    },
    "hh_rlhf": {
        "config": "examples/preference_hh_rlhf.yaml",
        "test": None,
        "overrides": {},
        "targets": {"log_loss": ("<=", 0.675), "accuracy": (">=", 0.60), "train_minutes": ("<=", 30)},
    },
    "banking77_decoder": {
        "config": "examples/classify_banking77.yaml",
        "test": DATA / "classification_banking77" / "test.csv",
        "overrides": {"model.name_or_path": "smollm2-135m-instruct", "lora.enabled": True, "lora.r": 16,
                      "lora.alpha": 32, "train.epochs": 1, "train.learning_rate": 3e-4, "train.batch_size": 16},
        "targets": {},
    },
}
DEFAULT = ("banking77", "hh_rlhf", "banking77_decoder")
METRICS = ("accuracy", "macro_f1", "map@3", "log_loss")


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_entry(name: str, extra: dict, workdir: Path) -> dict:
    """Train one entry as shipped (plus `extra`), then score model, baseline and ensemble on the same rows."""
    import numpy as np

    import tunelab
    from tunelab.models.hardware import peak_rss_bytes

    entry = ENTRIES[name]
    overrides = {**entry["overrides"], **extra, "train.output_dir": str(workdir / name)}
    config = tunelab.load_config(ROOT / entry["config"], overrides)
    start = time.perf_counter()
    result = tunelab.train(config, overwrite=True, echo=lambda line: print(f"  [{name}] {line}", flush=True))
    wall = time.perf_counter() - start
    run = tunelab.load(result.run_dir)
    task = run.task
    if entry["test"] is not None:
        frame, split = run.read(entry["test"]), Path(entry["test"]).name
    else:
        frame, split = tunelab.held_out_rows(run), "held-out rows"
    labelled = frame[task.label_ids(frame)[1]] if hasattr(task, "label_ids") else frame
    model_probs = task.predict_proba(run.model, run.tokenizer, labelled)
    rows = {"model": task.score_probabilities(labelled, model_probs)}
    if (result.run_dir / "baseline.npz").exists():
        base_probs = task.baseline_proba(result.run_dir, labelled)
        rows["baseline"] = task.score_probabilities(labelled, base_probs)
        rows["ensemble 0.5/0.5"] = task.score_probabilities(labelled, (model_probs + base_probs) / 2)
    prior = {k.removeprefix("prior_"): v for k, v in rows["model"].items() if k.startswith("prior_")}
    if prior:
        rows["class prior"] = prior
    metrics = result.metrics
    train_s = float(metrics.get("train_runtime_s", wall))
    return {"setting": name, "config": entry["config"], "overrides": overrides, "split": split,
            "rows_scored": int(len(labelled)), "train_seconds": round(train_s, 1), "wall_seconds": round(wall, 1),
            "train_examples": metrics.get("train_examples"), "tokens_per_s": None,  # speed is bench/speed.sh's job
            "peak_rss_gb": round(peak_rss_bytes() / 1e9, 2),
            "results": {k: {m: float(v) for m, v in r.items() if isinstance(v, (int, float, np.floating))}
                        for k, r in rows.items()},
            "warnings": metrics.get("warnings", []), "targets": entry["targets"]}


def check_targets(record: dict) -> list[str]:
    """'met'/'MISSED' lines for the model-alone targets of one entry."""
    lines = []
    model = dict(record["results"]["model"], train_minutes=record["train_seconds"] / 60)
    for metric, (op, bound) in record["targets"].items():
        value = model.get(metric)
        if value is None:
            lines.append(f"{metric}: not measured")
            continue
        ok = value >= bound if op == ">=" else value <= bound
        gap = "" if ok else f" (missed by {abs(value - bound):.4f})"
        lines.append(f"{metric} {value:.4f} {op} {bound}: {'met' if ok else 'MISSED'}{gap}")
    return lines


def print_table(records: list[dict]) -> None:
    from tunelab.models.hardware import environment_lines

    print("\n".join(environment_lines()))
    print(f"\n| data | rows scored | method | {' | '.join(METRICS)} | train min | config |")
    print("|---" * (len(METRICS) + 5) + "|")
    for r in records:
        for method, values in r["results"].items():
            cells = [f"{values[m]:.4f}" if m in values else "" for m in METRICS]
            minutes = f"{r['train_seconds'] / 60:.1f}" if method == "model" else ""
            extra = " ".join(f"{k}={v}" for k, v in r["overrides"].items() if k != "train.output_dir")
            config = f"`{r['config']}` {extra}".strip() if method == "model" else ""
            print(f"| {r['setting']} ({r['split']}) | {r['rows_scored']} | {method} | {' | '.join(cells)} | "
                  f"{minutes} | {config} |")
    for r in records:
        if r["targets"]:
            print(f"\n{r['setting']} targets (model alone): " + "; ".join(check_targets(r)))
        for w in r["warnings"]:
            print(f"{r['setting']} warning: {w}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(ENTRIES), default=list(DEFAULT))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every entry")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "quality.json"))
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--entry", help=argparse.SUPPRESS)  # internal: run one entry in this process
    parser.add_argument("--entry-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.entry:
        record = run_entry(args.entry, extra, Path(args.workdir))
        Path(args.entry_out).write_text(json.dumps(record, indent=2))
        return 0
    records = []
    with tempfile.TemporaryDirectory(prefix="tunelab-quality-") as tmp:
        workdir = Path(args.workdir or tmp)
        for name in args.only:
            out = Path(tmp) / f"{name}.json"
            print(f"== {name}: training {ENTRIES[name]['config']} ...", flush=True)
            cmd = [sys.executable, __file__, "--entry", name, "--entry-out", str(out), "--workdir", str(workdir),
                   "--set", *args.set]
            if subprocess.run(cmd, cwd=ROOT).returncode != 0 or not out.exists():
                print(f"== {name}: FAILED", flush=True)
                continue
            records.append(json.loads(out.read_text()))
    print_table(records)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records, indent=2))
    print(f"\nwritten: {args.out}")
    return 0 if len(records) == len(args.only) else 1


if __name__ == "__main__":
    raise SystemExit(main())
