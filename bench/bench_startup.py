"""CLI startup: wall time of `tunelab --help` (and the other file-only commands), median of N fresh processes.

Target: `tunelab --help` under 0.5 s. Commands that only read files (`--help`, `data stats`, `submission check`)
never import torch or transformers (tests/test_cli.py checks that; timing lives here, not in tests, as it
depends on the machine and its load).

    python bench/bench_startup.py              # tunelab --help, 5 runs
    python bench/bench_startup.py --runs 9 --all
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.5
DATA = Path(__file__).resolve().parents[1] / "src" / "tunelab" / "resources" / "qa_en_instructions.csv"


def command() -> list[str]:
    """The installed `tunelab` script (what users run), else the same entry point through this Python."""
    script = shutil.which("tunelab") or str(Path(sys.executable).with_name("tunelab"))
    if Path(script).exists():
        return [script]
    return [sys.executable, "-c", "import sys; from tunelab.cli.main import main; sys.exit(main())"]


def wall(args: list[str], runs: int) -> tuple[float, list[float]]:
    times = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--all", action="store_true", help="also `data stats` and `submission check`")
    args = parser.parse_args()
    base = command()
    cases = {"tunelab --help": ["--help"]}
    if args.all:
        tmp = Path(tempfile.mkdtemp())
        (tmp / "sub.csv").write_text("id,winner_model_a,winner_model_b,winner_tie\n1,0.3,0.3,0.4\n", encoding="utf-8")
        cases["tunelab data stats FILE"] = ["data", "stats", str(DATA)]
        cases["tunelab submission check FILE"] = ["submission", "check", str(tmp / "sub.csv"), "--format", "arena"]
    wall(base + ["--help"], 1)  # warm the file cache (and .pyc files) first
    for name, extra in cases.items():
        median, times = wall(base + extra, args.runs)
        verdict = "ok" if median < TARGET_S else "over"
        print(f"{name}: median {median:.3f} s over {args.runs} runs (min {min(times):.3f}, max {max(times):.3f}); "
              f"target {TARGET_S} s: {verdict}")


if __name__ == "__main__":
    main()
