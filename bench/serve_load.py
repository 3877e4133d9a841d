"""Load benchmark of `tunelab serve`: throughput and latency at concurrency 1, 4 and 16, on loopback only.

Starts `tunelab serve MODEL` as a child process on a free 127.0.0.1 port, sends N chat requests per
concurrency level (a share of them malformed: negative max_tokens, an unknown role, broken JSON), and prints
completion tokens/s, p50/p95 latency of the good requests, answers counted by status, and the server's peak
RSS. Bounded: N requests per level and a wall-clock limit; the server is stopped at the end.

    python bench/serve_load.py                       # packaged SmolLM2, 32 requests per level, 32 tokens each
    python bench/serve_load.py --requests 64 --max-tokens 64 --output serve_load.json
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

QUESTIONS = ["What is the capital of France?", "Give me three tips for sleeping better.",
             "Explain what a neural network is in two sentences.", "Write a short poem about autumn.",
             "How do I boil an egg?", "What is 17 times 3?", "Name three primary colors.",
             "Why is the sky blue?"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: bytes, timeout: float) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return 0, {"error": str(exc)}


def request_bodies(n: int, model: str, max_tokens: int, malformed_every: int) -> list[tuple[str, bytes]]:
    """(kind, body) for n requests: every `malformed_every`-th one is malformed, cycling through three mistakes."""
    bodies, bad = [], 0
    for i in range(n):
        good = {"model": model, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
        if malformed_every and i % malformed_every == malformed_every - 1:
            kind = ("negative_max_tokens", "unknown_role", "broken_json")[bad % 3]
            bad += 1
            if kind == "negative_max_tokens":
                bodies.append((kind, json.dumps(good | {"max_tokens": -5}).encode()))
            elif kind == "unknown_role":
                bodies.append((kind, json.dumps(good | {"messages": [{"role": "wizard", "content": "hi"}]}).encode()))
            else:
                bodies.append((kind, b'{"model": "' + model.encode() + b'", "messages": ['))
        else:
            bodies.append(("good", json.dumps(good).encode()))
    return bodies


class PeakRSS:
    """Polls a process's resident memory every 0.1 s (psutil), keeping the peak."""

    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:  # the process ended
                return
            time.sleep(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(1)
        return self.peak


def run_level(url: str, bodies, concurrency: int, deadline: float, timeout: float) -> dict:
    results = []

    def one(item):
        kind, body = item
        if time.monotonic() > deadline:
            return kind, -1, 0.0, 0  # not sent: over the time limit
        start = time.perf_counter()
        status, answer = post(url, body, timeout)
        tokens = answer.get("usage", {}).get("completion_tokens", 0) if status == 200 else 0
        return kind, status, time.perf_counter() - start, tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - start
    good = sorted(latency for kind, status, latency, _ in results if kind == "good" and status == 200)
    tokens = sum(t for *_, t in results)
    malformed = [(kind, status) for kind, status, *_ in results if kind != "good"]
    return {
        "concurrency": concurrency, "requests": len(results), "seconds": round(wall, 2),
        "completion_tokens": tokens, "tokens_per_second": round(tokens / wall, 2) if wall else 0.0,
        "p50_s": round(statistics.median(good), 3) if good else None,
        "p95_s": round(good[min(len(good) - 1, int(0.95 * len(good)))], 3) if good else None,
        "status_counts": dict(Counter(str(status) for _, status, *_ in results)),
        "malformed_all_4xx": all(400 <= status < 500 for _, status in malformed),
        "good_failed": sum(1 for kind, status, *_ in results if kind == "good" and status != 200),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="run directory or model alias to serve")
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--malformed-every", type=int, default=8, help="every k-th request is malformed (0: none)")
    parser.add_argument("--max-seconds", type=float, default=900, help="wall-clock limit for the whole benchmark")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    deadline = time.monotonic() + args.max_seconds
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tunelab.cli.main", "serve", args.model, "--host", "127.0.0.1",
               "--port", str(port), "--served-model-name", "bench", "--max-batch", str(max(levels))]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rss = PeakRSS(server.pid)
    rows = []
    try:
        while True:  # wait for the model to load
            if server.poll() is not None:
                print(f"server exited with {server.returncode}: {server.stderr.read()[-2000:]}", file=sys.stderr)
                return 1
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                print("server did not start in time", file=sys.stderr)
                return 1
            time.sleep(0.5)
        url = f"{base}/v1/chat/completions"
        post(url, json.dumps({"model": "bench", "max_tokens": 2,
                              "messages": [{"role": "user", "content": "hi"}]}).encode(), 120)  # warm-up
        for level in levels:
            bodies = request_bodies(args.requests, "bench", args.max_tokens, args.malformed_every)
            rows.append(run_level(url, bodies, level, deadline, timeout=300))
        crashed = server.poll() is not None
        with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
            healthy = response.status == 200 and not crashed
    finally:
        peak = rss.stop()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(f"tunelab serve {args.model}: {args.requests} requests per level, max_tokens {args.max_tokens}, "
          f"every {args.malformed_every}th malformed; loopback; threads {os.environ.get('TUNELAB_THREADS', 'auto')}")
    print(f"{'conc':>4} {'tok/s':>8} {'x c=1':>6} {'p50 s':>7} {'p95 s':>7} {'wall s':>7}  statuses  malformed->4xx")
    base_rate = rows[0]["tokens_per_second"] if rows else 0
    for row in rows:
        speedup = row["tokens_per_second"] / base_rate if base_rate else 0
        print(f"{row['concurrency']:>4} {row['tokens_per_second']:>8.1f} {speedup:>6.2f} {row['p50_s'] or 0:>7.2f} "
              f"{row['p95_s'] or 0:>7.2f} {row['seconds']:>7.1f}  {row['status_counts']}  {row['malformed_all_4xx']}")
    print(f"server peak RSS: {peak / 2**20:.0f} MiB; server crashed: {not healthy}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"levels": rows, "peak_rss_mib": round(peak / 2**20), "server_healthy_after": healthy}, f, indent=2)
    return 0 if healthy and all(r["malformed_all_4xx"] and r["good_failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
