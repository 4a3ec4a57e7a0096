"""The row layout of one UNet call, shared by the diffusers processors (through
``cross_attention_kwargs``) and the ComfyUI patches (through ``transformer_options``): interleaved
pairs ``[g, a]``, or with a BCM background triples ``[g, a, r]`` (see branch_math)."""
from __future__ import annotations

from dataclasses import dataclass

from .branch_math import PAIR, TRIPLE


@dataclass(frozen=True)
class PassContext:
    background: bool = False  # rows are triples whose third row is the pair's noised background

    @property
    def group(self) -> int:
        return TRIPLE if self.background else PAIR


PLAIN_PASS = PassContext()
BACKGROUND_PASS = PassContext(background=True)
