#!/usr/bin/env bash
# Set up, then run the whole test suite offline (CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 exec .venv/bin/python -m pytest -q -rsx -p no:cacheprovider --durations=15 "$@"
