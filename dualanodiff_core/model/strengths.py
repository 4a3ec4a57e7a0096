"""How strongly each trained part acts; shared by the diffusers adapter and the ComfyUI patches."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Strengths:
    """0 switches a part off exactly, 1 is the trained model."""

    global_lora: float = 1.0
    anomaly_lora: float = 1.0
    saim: float = 1.0
    _scale_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def lora_scale(self, like: torch.Tensor) -> torch.Tensor:
        """``(2,)`` per-branch LoRA scale on ``like``'s device and dtype, made once per placement
        (no host-to-device copy per attention call)."""
        key = (like.device, like.dtype, self.global_lora, self.anomaly_lora)
        scale = self._scale_cache.get(key)
        if scale is None:
            self._scale_cache.clear()
            scale = self._scale_cache[key] = torch.tensor(
                [self.global_lora, self.anomaly_lora], device=like.device, dtype=like.dtype
            )
        return scale
