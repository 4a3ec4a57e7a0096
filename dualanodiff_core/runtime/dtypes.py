"""The precisions every command names (``fp16``, ``bf16``, ``fp32``; accelerate's ``no`` means fp32)
and their torch dtypes: one map for the CLI, the trainer, the generator and the benchmarks. Torch is
imported only when a name is turned into a dtype, so building the CLI stays cheap."""
from __future__ import annotations

from ..errors import DualAnoDiffError

NAMES = ("fp16", "bf16", "fp32")


def torch_dtype(name: str):
    import torch

    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "no": torch.float32}
    if name not in table:
        raise DualAnoDiffError(f"unknown precision {name!r}; choose one of {', '.join(NAMES)}")
    return table[name]
