"""Quality of tunelab's classify and preference tasks on the FULL Banking77 and HH-RLHF data, next to
classical baselines trained and scored on exactly the same rows.

    HF_HUB_OFFLINE=1 python bench/bench_classify_preference.py            # both, ~15 min on 2 CPU cores
    HF_HUB_OFFLINE=1 python bench/bench_classify_preference.py --only banking77 --epochs-banking 2

Banking77: train.csv (10,003 rows) -> test.csv (3,080 rows). tunelab = MiniLM (all-minilm-l6-v2) full
fine-tune; baselines = class prior and TF-IDF (word 1-2 grams + char 2-5 grams) + logistic regression.
HH-RLHF (harmless-base test, 2,312 pairs): tunelab's own seeded, stratified 90/10 split (A/B placement by
the task's seeded RNG). tunelab = MiniLM over `prompt [SEP] a [SEP] b` with swap augmentation + swap TTA;
baselines = prior, response length (logistic regression on length differences), and TF-IDF of
response A minus response B + logistic regression.
Prints a table and writes bench/results/classify_preference.json.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def banking77(a, workdir: Path) -> list[dict]:
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    from tunelab.config import build_config
    from tunelab.metrics.classification import classification_metrics, majority_probs
    from tunelab.training.recipe import train

    train_path, test_path = DATA / "classification_banking77" / "train.csv", DATA / "classification_banking77" / "test.csv"
    tr, te = pd.read_csv(train_path), pd.read_csv(test_path)
    classes = sorted(tr["category"].unique())
    y_tr = tr["category"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    y_te = te["category"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    rows = []

    rows.append(dict(data="banking77", method="class prior", seconds=0.0,
                     **classification_metrics(y_te, majority_probs(y_tr, len(classes), len(te)))))

    start = time.perf_counter()
    tfidf = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2)),
        LogisticRegression(C=20.0, max_iter=2000))
    tfidf.fit(tr["text"], y_tr)
    rows.append(dict(data="banking77", method="TF-IDF + logistic regression", seconds=time.perf_counter() - start,
                     **classification_metrics(y_te, tfidf.predict_proba(te["text"]))))

    config = build_config({
        "task": {"name": "classify"},
        "model": {"name_or_path": "all-minilm-l6-v2"},
        "data": {"train_path": str(train_path), "eval_path": str(test_path), "columns": {"label": "category"}},
        "lora": {"enabled": False},
        "train": {"preset": "fast", "epochs": a.epochs_banking, "learning_rate": a.lr_banking, "batch_size": 32,
                  "max_length": 64, "scheduler": "linear", "warmup_ratio": 0.05, "logging_steps": 50,
                  "output_dir": str(workdir / "banking77")},
    })
    start = time.perf_counter()
    m = train(config, overwrite=True, echo=lambda s: None).metrics
    rows.append(dict(data="banking77", method=f"tunelab MiniLM full FT ({a.epochs_banking:g} ep)",
                     seconds=time.perf_counter() - start,
                     **{k: m[k] for k in ("accuracy", "macro_f1", "log_loss", "map@3")}))
    return rows


def hh_rlhf(a, workdir: Path) -> list[dict]:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from tunelab.config import build_config
    from tunelab.data.pipeline import load_splits
    from tunelab.metrics.classification import accuracy, log_loss, pearson
    from tunelab.tasks import get_task
    from tunelab.training.recipe import train

    config = build_config({
        "task": {"name": "preference", "swap_augment": True, "swap_tta": True},
        "model": {"name_or_path": "all-minilm-l6-v2"},
        "data": {"train_path": str(DATA / "preference_hh_rlhf" / "test.jsonl.gz"), "eval_fraction": 0.1,
                 "stratify_by": "label"},
        "lora": {"enabled": False},
        "train": {"preset": "fast", "epochs": a.epochs_hh, "learning_rate": a.lr_hh, "batch_size": 16,
                  "max_length": a.max_length_hh, "scheduler": "linear", "warmup_ratio": 0.05, "logging_steps": 50,
                  "output_dir": str(workdir / "hh")},
    })
    # The very rows the tunelab run trains and is scored on.
    splits = load_splits(config, get_task("preference")(config))
    tr, ev = splits.train, splits.eval
    y_tr, y_ev = tr["label"].astype(int).to_numpy(), ev["label"].astype(int).to_numpy()
    length_diff = (ev["response_a"].str.len() - ev["response_b"].str.len()).to_numpy()
    rows = []

    def row(method, probs, seconds):
        return dict(data="hh-rlhf", method=method, seconds=seconds, log_loss=log_loss(y_ev, probs),
                    accuracy=accuracy(y_ev, probs), length_corr=pearson(probs[:, 0] - probs[:, 1], length_diff))

    prior = np.bincount(y_tr, minlength=2) / len(y_tr)
    rows.append(row("class prior", np.tile(prior, (len(ev), 1)), 0.0))

    def length_features(f):
        la, lb = f["response_a"].str.len().to_numpy(float), f["response_b"].str.len().to_numpy(float)
        return np.column_stack([la - lb, np.log1p(la) - np.log1p(lb)])

    start = time.perf_counter()
    lengths = LogisticRegression(max_iter=1000).fit(length_features(tr), y_tr)
    rows.append(row("response length + logistic regression", lengths.predict_proba(length_features(ev)),
                    time.perf_counter() - start))

    start = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(
        list(tr["response_a"]) + list(tr["response_b"]))
    diff = lambda f: vec.transform(f["response_a"]) - vec.transform(f["response_b"])
    # Antisymmetric features + no intercept: swapping A/B flips the prediction exactly.
    tfidf = LogisticRegression(C=1.0, max_iter=2000, fit_intercept=False).fit(
        hstack([diff(tr), length_features(tr)]).tocsr(), y_tr)
    rows.append(row("TF-IDF(A) - TF-IDF(B) + length, logistic regression",
                    tfidf.predict_proba(hstack([diff(ev), length_features(ev)]).tocsr()), time.perf_counter() - start))

    start = time.perf_counter()
    m = train(config, overwrite=True, echo=lambda s: None).metrics
    rows.append(dict(data="hh-rlhf", method=f"tunelab MiniLM full FT, swap aug + TTA ({a.epochs_hh:g} ep)",
                     seconds=time.perf_counter() - start, log_loss=m["log_loss"], accuracy=m["accuracy"],
                     length_corr=m["length_corr_pred"]))
    rows[-1]["note"] = f"true-label length corr {m['length_corr_true']:.3f}; eval rows {len(ev)}"
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ["data", "method", "accuracy", "macro_f1", "map@3", "log_loss", "length_corr", "seconds"]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
    table = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["banking77", "hh-rlhf"])
    p.add_argument("--epochs-banking", type=float, default=1.0)
    p.add_argument("--lr-banking", type=float, default=1e-3)
    p.add_argument("--epochs-hh", type=float, default=1.0)
    p.add_argument("--lr-hh", type=float, default=5e-5)
    p.add_argument("--max-length-hh", type=int, default=128)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "classify_preference.json")
    a = p.parse_args()
    from tunelab.io import atomic_write_json

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as tmp:
        if a.only in (None, "banking77"):
            rows += banking77(a, Path(tmp))
            print_table(rows)
        if a.only in (None, "hh-rlhf"):
            rows += hh_rlhf(a, Path(tmp))
    print_table(rows)
    for r in rows:
        if r.get("note"):
            print(f"note ({r['method']}): {r['note']}")
    atomic_write_json(a.output, {"args": {k: str(v) for k, v in vars(a).items()}, "rows": rows})
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
