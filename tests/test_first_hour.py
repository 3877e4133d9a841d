"""What a new user sees in the first hour (issue #19): an estimate before the first step, a run dir that keeps
what the console said (train.log, eval_predictions.jsonl), counts that add up, one final eval line, the
task's own metrics and peak memory in the summary."""
import json
import random

import pandas as pd
import yaml

from conftest import tiny_sft_raw


def _write(path, raw) -> str:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_sft_run_estimates_first_logs_to_train_log_and_summarises_once(tiny_llama, cli, tmp_path):
    run = tmp_path / "run"
    cfg = _write(tmp_path / "c.yaml", tiny_sft_raw(tiny_llama, run, max_steps=4, estimate_steps=2))
    code, out, _ = cli("train", cfg)
    assert code == 0, out
    lines = _lines(out)
    # 1. the estimate comes before the first step; the refined one never says "0 steps left"
    estimate = next(i for i, line in enumerate(lines) if line.startswith("estimated training time:"))
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step 1/"))
    assert estimate < first_step, out
    assert "for 4 steps" in lines[estimate] and "0 steps left" not in out
    # 2. train.log is the console output, plain text; eval_predictions.jsonl has a per-row result
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "\x1b" not in log and "[/" not in log
    assert log.splitlines()[0].startswith(f"run dir: {run}") and "estimated training time:" in log
    assert any(line.startswith("done: 4 steps") for line in log.splitlines())
    rows = [json.loads(line) for line in (run / "eval_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    held_out = json.loads((run / "eval_rows.json").read_text())["rows"]
    assert [r["row"] for r in rows] == held_out
    assert all({"prompt", "references", "loss"} <= set(r) for r in rows)
    assert any(isinstance(r["loss"], float) for r in rows)
    # 3. read → valid → kept → train / eval add up
    head = next(line for line in log.splitlines() if " read → " in line)
    assert "252 read → 252 valid → 40 kept (data.max_rows) → " in head, head
    train, evaluation = head.rsplit(" → ", 1)[1].replace(" train /", "").replace(" eval", "").split()
    assert int(train) + int(evaluation) == 40 and int(evaluation) == len(held_out), head
    # 4. the final evaluation is printed once, in the summary, with perplexity (a generative task) and memory
    lines = log.splitlines()  # the console wraps long lines; the log has them whole
    finals = [line for line in lines if "eval loss" in line and "before training" not in line]
    assert len(finals) == 1 and finals[0].startswith("done: 4 steps") and "perplexity" in finals[0], out
    step_evals = [line for line in lines if line.startswith("step ") and "eval_loss" in line]
    assert len(step_evals) == len(set(step_evals)), out
    assert any(line.startswith("peak memory: ") and "GB RSS" in line for line in lines), out
    assert "eval_perplexity" in json.loads((run / "metrics.json").read_text())

    # --resume appends to train.log
    code, out, _ = cli("train", "--resume", "--output-dir", run, "--max-steps", 6)
    assert code == 0, out
    resumed = (run / "train.log").read_text(encoding="utf-8")
    assert resumed.startswith(log) and "--- resumed " in resumed and "done: 6 steps" in resumed


def test_overlong_drop_counts_add_up_in_data_check(tiny_llama, cli, tmp_path):
    cfg = _write(tmp_path / "c.yaml", tiny_sft_raw(tiny_llama, tmp_path / "run"))
    code, out, _ = cli("data", "check", cfg, "--set", "data.overlong=drop")
    assert code == 0, out
    text = " ".join(out.split())  # the console wraps long lines
    report = text.split(" read → ", 1)[1].split(" → ")  # valid, kept, within max_length, train / eval
    head = " → ".join(report)
    assert report[1] == "40 kept (data.max_rows)" and report[2].endswith("within max_length"), head
    within = int(report[2].split()[0])
    train, evaluation = (int(report[3].split()[0]), int(report[3].split()[3]))
    assert 0 < within < 40 and train + evaluation == within, head
    assert f"split: {train} train / {evaluation} eval rows" in text


def test_classify_summary_shows_the_task_metrics_and_no_perplexity(tiny_llama, cli, tmp_path):
    rng = random.Random(0)
    words = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"]}
    rows = [{"text": " ".join(rng.choice(words[label]) for _ in range(5)), "label": label}
            for label in ("pos", "neg") for _ in range(20)]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    raw = tiny_sft_raw(tiny_llama, tmp_path / "run", data=tmp_path / "d.csv", max_steps=2, estimate_steps=1)
    raw["task"] = {"name": "classify", "baseline": False, "top_k": 2}
    raw["data"]["max_rows"] = None
    code, out, _ = cli("train", _write(tmp_path / "c.yaml", raw))
    assert code == 0, out
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")  # the console wraps long lines
    metrics_line = next(line for line in log.splitlines() if line.startswith("task metrics on "))
    assert "estimated training time: " in log  # the timed batch works for a classification head too
    assert "map@2" in metrics_line and "accuracy" in metrics_line and "log_loss" in metrics_line, out
    assert "perplexity" not in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "eval_perplexity" not in metrics and "eval_loss" in metrics
    assert (tmp_path / "run" / "eval_predictions.jsonl").is_file()


def test_summary_lines_name_each_tasks_own_metrics():
    from tunelab.training.report import summary_lines

    base = {"train_loss": 0.5, "train_steps": 10, "train_runtime_s": 12.0, "eval_loss": 0.4, "eval_before_loss": 0.9}
    preference = summary_lines(base, {"log_loss": 1.02, "accuracy": 0.41, "prior_log_loss": 1.09,
                                      "baseline_log_loss": 1.05, "length_corr_pred": 0.1}, "log_loss", 30, None, "f", "m")
    assert preference[0] == "done: 10 steps in 12 s   train loss 0.5000   eval loss 0.4000 (before 0.9000)"
    assert preference[1] == "task metrics on 30 held-out rows: log_loss 1.0200   accuracy 0.4100"
    summarize = summary_lines({**base, "eval_perplexity": 1.49}, {"rouge1": 0.3, "rouge2": 0.1, "rougeL": 0.25,
                                                                  "generated_rows": 30}, "loss", 30, "p.jsonl", "f", "m")
    assert "perplexity 1.49" in summarize[0]
    assert summarize[1] == "task metrics on 30 held-out rows: rouge1 0.3000   rouge2 0.1000   rougeL 0.2500"
    assert summarize[2] == "per-row predictions: p.jsonl" and summarize[3].startswith("peak memory: ")
