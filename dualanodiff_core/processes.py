"""How many processes share a run, said out loud: ``accelerate launch --num_processes 2 --cpu`` without
``--multi_gpu`` silently starts one, and nothing else would show it."""
from __future__ import annotations

import sys


def announce(accelerator, what: str, threads: int | None = None) -> None:
    """Say how many processes share the run (and, on a CPU, how many torch threads each uses)."""
    if accelerator.is_main_process:
        n = accelerator.num_processes
        share = "1 process" if n == 1 else f"{n} processes share the work"
        per = "" if threads is None else f", {threads} thread{'s' if threads > 1 else ''}"
        print(f"{what}: {share} on {accelerator.device.type}{per}", file=sys.stderr, flush=True)


def cpu_threads(accelerator) -> int | None:
    """On a CPU, set torch's threads to this process's share of the cores other processes leave free
    (:mod:`runtime.threads`) and return the count; None on a GPU."""
    if accelerator.device.type != "cpu":
        return None
    from .runtime.threads import set_threads

    return set_threads(share=accelerator.num_processes)
