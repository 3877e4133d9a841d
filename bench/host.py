"""How much CPU the host's other tenants took while a bench row ran: the steal time of /proc/stat.

On a shared VM the same row drifts by tens of percent within minutes; a row timed while 10% of the CPU was
stolen is not comparable with one timed at 0%. Each bench row records `host_steal_pct` beside its speed so that
results compared across runs (and months) can be read with that in mind.

    with StealMeter() as steal:
        ...timed work...
    steal.pct  # None where /proc/stat is missing (not Linux)
"""
from __future__ import annotations

from pathlib import Path


def _cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user/nice
    values = [int(v) for v in fields[1:9]]
    if len(values) < 8:
        return None
    return values[7], sum(values)


class StealMeter:
    def __init__(self):
        self.pct: float | None = None
        self._start = None

    def __enter__(self) -> "StealMeter":
        self._start = _cpu_jiffies()
        return self

    def __exit__(self, *exc) -> None:
        end = _cpu_jiffies()
        if self._start is not None and end is not None and end[1] > self._start[1]:
            self.pct = round(100.0 * (end[0] - self._start[0]) / (end[1] - self._start[1]), 1)


def steal_text(pct: float | None) -> str:
    return "steal n/a" if pct is None else f"steal {pct:.1f}%"
