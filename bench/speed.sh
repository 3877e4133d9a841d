#!/usr/bin/env bash
# The whole speed benchmark in one command: training (tutorial vs best plain vs tunelab, LoRA and full FT)
# then generation (one at a time vs GenerationEngine). Results: bench/results/train_speed.{log,json}, generate.log.
#   bash bench/speed.sh                      # ~15 min on a 2-core CPU
#   bash bench/speed.sh --train 16 --eval 8  # extra arguments go to bench_train_speed.py
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export HF_HUB_OFFLINE=1
mkdir -p bench/results
.venv/bin/python bench/bench_train_speed.py --json bench/results/train_speed.json "$@" | tee bench/results/train_speed.log
.venv/bin/python bench/bench_generate.py | tee bench/results/generate.log
