"""How many CPU threads torch's intra-op pool uses: chosen explicitly, never as a hidden side effect.

Precedence: an explicit count (`train.cpu_threads`) > `TUNELAB_THREADS` > `OMP_NUM_THREADS` (torch already
sized its pool from it) > a ~0.5 s measurement. `choose_cpu_threads` only decides; the caller applies the
count, scoped with `cpu_threads(n)` (the trainer) or process-wide (the generation engine).

Why measure: on a shared 2-vCPU VM, 2 threads ran a 256x576 @ 576x1536 GEMM at 27 GFLOP/s, 1 thread at 89;
at 16 rows (batched decoding) 1.8 vs 39 GFLOP/s: the OpenMP barrier waits on a busy or SMT-sibling vCPU.
On a quiet multi-core machine more threads win, so measure, never assume.
"""
from __future__ import annotations

import logging
import os
import time
import torch
import torch.nn.functional as F

from tunelab.errors import UserError
from tunelab.models.hardware import torch_setting

log = logging.getLogger(__name__)

THREADS_ENV = "TUNELAB_THREADS"

_measured: int | None = None  # one measurement per process: the machine does not change mid-run


def threads_from_env() -> int | None:
    """`TUNELAB_THREADS` as a positive int, None when unset or empty; anything else is a UserError."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise UserError(f"{THREADS_ENV}={raw!r} is not a thread count: set it to a whole number >= 1, "
                        f"or unset it to let tunelab measure")
    return count


def choose_cpu_threads(requested: int | None = None) -> tuple[int, str]:
    """(thread count, where it came from). Changes no torch setting."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise UserError(f"train.cpu_threads must be a whole number >= 1 (or null to measure), got {requested!r}")
        return requested, "train.cpu_threads"
    from_env = threads_from_env()
    if from_env is not None:
        return from_env, THREADS_ENV
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    return calibrate_cpu_threads(), "measured"


def calibrate_cpu_threads() -> int:
    """Whichever of 1, N/2, N intra-op threads runs model-sized GEMMs fastest (N = torch's current count).

    Measured once per process (~0.5 s). Leaves torch's thread count and the global RNG as they were:
    the inputs come from a private generator, so the run's seeded randomness does not depend on this.
    """
    global _measured
    if _measured is not None:
        return _measured
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(1536, 576, generator=g)
    rows = (torch.randn(16, 576, generator=g), torch.randn(256, 576, generator=g))
    before = torch.get_num_threads()
    candidates = sorted({1, max(1, before // 2), before})
    fastest = {threads: float("inf") for threads in candidates}
    try:
        # Interleaved rounds, best time per count: one busy moment must not decide the whole run.
        for _ in range(3):
            for threads in candidates:
                torch.set_num_threads(threads)
                for x in rows:
                    F.linear(x, weight)  # warm-up
                start = time.perf_counter()
                for _ in range(3):
                    for x in rows:
                        F.linear(x, weight)
                fastest[threads] = min(fastest[threads], time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    # More threads unless fewer are clearly (>15%) faster.
    best = before
    for threads in candidates:
        if fastest[threads] < fastest[best] / 1.15:
            best = threads
    log.info("CPU threads measured: %s -> %d", ", ".join(f"{t}: {s * 1e3:.1f} ms" for t, s in fastest.items()), best)
    _measured = best
    return best


def cpu_threads(count: int | None):
    """Run the block with `count` intra-op threads (None: unchanged), then restore the previous count."""
    return torch_setting(torch.get_num_threads, torch.set_num_threads, count)
