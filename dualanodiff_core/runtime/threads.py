"""How many CPU threads torch should use, given what else the machine is doing.

torch starts as many threads as there are cores. Beside another busy process they spin against it: on 2
cores a demo training step went from 0.41 s to 2-17 s. So the commands look first: the cores this process
may run on, minus those other processes keep busy (measured from the kernel's counters over a short
window on Linux, from the load average where there is one), at least 1. An explicit ``OMP_NUM_THREADS``
or ``torch.set_num_threads`` by the caller is left alone (``DUALANODIFF_THREADS`` overrides everything).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

WINDOW_S = 0.3


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs together, from /proc/stat (Linux); None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [float(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cpus(window: float = WINDOW_S) -> float | None:
    """How many CPUs other processes keep busy: measured over ``window`` seconds while this process waits
    (Linux), else the 1-minute load average (macOS and other Unix); None where neither exists (Windows)."""
    before = _cpu_times()
    if before is not None:
        time.sleep(window)
        after = _cpu_times()
        total = after[1] - before[1]
        if total > 0:
            return (os.cpu_count() or 1) * (after[0] - before[0]) / total
    if hasattr(os, "getloadavg"):
        try:
            return os.getloadavg()[0]
        except OSError:
            return None
    return None


def free_cpus(busy: float | None = None) -> int:
    """Usable CPUs not kept busy by other processes (at least 1); all usable ones if that is unknown."""
    usable = usable_cpus()
    busy = busy_cpus() if busy is None else busy
    if busy is None:
        return usable
    others_here = busy * usable / (os.cpu_count() or usable)  # the share of the busy ones on our CPUs
    return max(1, min(usable, int(usable - others_here + 0.5)))


def choose_threads(share: int = 1) -> int | None:
    """The thread count for torch in one of ``share`` processes running side by side, or None to leave
    torch's as it is (set explicitly by the user)."""
    explicit = os.environ.get("DUALANODIFF_THREADS")
    if explicit:
        try:
            return max(1, int(explicit))
        except ValueError:
            from ..errors import DualAnoDiffError

            raise DualAnoDiffError(f"DUALANODIFF_THREADS={explicit!r} is not a whole number; unset it or give e.g. 2")
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, free_cpus() // max(1, share))


def set_threads(share: int = 1) -> int:
    """Apply :func:`choose_threads` to torch; returns the thread count torch uses now."""
    import torch

    n = choose_threads(share)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()
