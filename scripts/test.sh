#!/usr/bin/env bash
# Set up, then run the whole test suite offline (CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The web UI's browser tests (tests/test_ui.py) drive Debian's chromium through Playwright (Playwright's own browser
# download is not reachable here). CI runs as root: install it when it is missing.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (apt-get) for the web UI's browser tests"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
    || echo "warning: could not install chromium; the browser tests will be skipped (a failure in CI)"
fi
HF_HUB_OFFLINE=1 exec .venv/bin/python -m pytest -q -rsx -p no:cacheprovider --durations=15 "$@"
