"""How many processes share a run, said out loud: ``accelerate launch --num_processes 2 --cpu`` without
``--multi_gpu`` silently starts one, and nothing else would show it."""
from __future__ import annotations

import sys


def announce(accelerator, what: str) -> None:
    if accelerator.is_main_process:
        n = accelerator.num_processes
        share = "1 process" if n == 1 else f"{n} processes share the work"
        print(f"{what}: {share} on {accelerator.device.type}", file=sys.stderr, flush=True)
