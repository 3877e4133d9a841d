#!/usr/bin/env bash
# The quality table (issue #9): shipped examples trained as shipped vs the classical baseline on the same rows.
# ~60 min on 2 CPU cores; results in bench/results/quality.json. Extra arguments go to bench_quality.py
# (e.g. --only banking77).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export HF_HUB_OFFLINE=1
exec .venv/bin/python bench/bench_quality.py "$@"
