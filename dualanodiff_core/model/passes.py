"""What one UNet call needs beyond its inputs: is it BCM's reference pass, and the background
tokens that pass records for the main pass. Shared by the diffusers processors (through
``cross_attention_kwargs``) and the ComfyUI patches (through ``transformer_options``)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PassContext:
    reference: bool = False
    background_tokens: dict = field(default_factory=dict)

    def __deepcopy__(self, memo):  # option dicts get deep-copied; the recorded tokens must be shared
        return self


PLAIN_PASS = PassContext()
