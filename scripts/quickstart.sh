#!/usr/bin/env bash
# The main job on a fresh machine: set up, then fine-tune the embedded model on the embedded data, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 exec .venv/bin/tunelab quickstart "$@"
