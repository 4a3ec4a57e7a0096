"""How many processes share a run, said out loud: ``accelerate launch --num_processes 2 --cpu`` without
``--multi_gpu`` silently starts one, and nothing else would show it."""
from __future__ import annotations

import sys


def announce(accelerator, what: str) -> None:
    """Say how many processes share the run; on a CPU also pick and say the thread count
    (:mod:`runtime.threads`: the cores other processes leave free)."""
    threads = ""
    if accelerator.device.type == "cpu":
        from .runtime.threads import set_threads

        n_threads = set_threads()
        threads = f", {n_threads} thread{'s' if n_threads > 1 else ''}"
    if accelerator.is_main_process:
        n = accelerator.num_processes
        share = "1 process" if n == 1 else f"{n} processes share the work"
        print(f"{what}: {share} on {accelerator.device.type}{threads}", file=sys.stderr, flush=True)
