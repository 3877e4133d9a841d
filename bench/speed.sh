#!/usr/bin/env bash
# The whole speed benchmark in one command: training (tutorial vs best plain vs tunelab, LoRA and full FT)
# then generation (one at a time vs GenerationEngine), encoder classification (plain Trainer vs tunelab) and time
# to first step. Results: bench/results/{train_speed,generate,encoder_speed,first_step}.{log,json}.
#   bash bench/speed.sh                      # ~15 min on a 2-core CPU
#   bash bench/speed.sh --train 16 --eval 8  # extra arguments go to bench_train_speed.py
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export HF_HUB_OFFLINE=1
mkdir -p bench/results
.venv/bin/python bench/bench_train_speed.py --json bench/results/train_speed.json "$@" | tee bench/results/train_speed.log
.venv/bin/python bench/bench_generate.py --json bench/results/generate.json | tee bench/results/generate.log
.venv/bin/python bench/bench_encoder_speed.py --json bench/results/encoder_speed.json | tee bench/results/encoder_speed.log
.venv/bin/python bench/bench_first_step.py --json bench/results/first_step.json | tee bench/results/first_step.log
