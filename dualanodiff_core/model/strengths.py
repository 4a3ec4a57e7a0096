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

    def lora_scale(self, like: torch.Tensor, group: int = 2) -> torch.Tensor:
        """``(group,)`` LoRA scale per row of a pair (global, anomaly) or a BCM triple (global,
        anomaly, background = global) on ``like``'s device and dtype, made once per placement (no
        host-to-device copy per attention call)."""
        key = (like.device, like.dtype, group, self.global_lora, self.anomaly_lora)
        scale = self._scale_cache.get(key)
        if scale is None:
            if len(self._scale_cache) >= 4:
                self._scale_cache.clear()
            values = [self.global_lora, self.anomaly_lora, self.global_lora][:group]
            scale = self._scale_cache[key] = torch.tensor(values, device=like.device, dtype=like.dtype)
        return scale
