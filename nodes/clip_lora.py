"""The checkpoint's shared text-encoder LoRA on a ComfyUI CLIP, through ComfyUI's own LoRA patches."""
from __future__ import annotations

import torch

from ..dualanodiff_core.errors import CheckpointError, DualAnoDiffError
from ..dualanodiff_core.formats.kohya_export import text_encoder_lora_tensors


class NoClip:
    """The Loader's CLIP output when its ``clip`` input is not connected: any use says how to fix the graph
    (a plain None would reach ComfyUI's "your checkpoint does not contain a valid clip")."""

    MESSAGE = ("the DualAnoDiff Loader's CLIP output is empty because its 'clip' input is not connected: connect "
               "the CLIP of Load Checkpoint to the Loader's 'clip' input, or encode the prompts with that CLIP directly")

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise DualAnoDiffError(self.MESSAGE)


def apply_text_encoder_lora(clip, ckpt, strength: float):
    """A clone of ``clip`` with the LoRA at ``strength`` (the input CLIP is unchanged)."""
    if clip is None:
        return NoClip()
    if strength == 0 or not ckpt.has("text_encoder_lora"):
        return clip
    import comfy.lora

    state = text_encoder_lora_tensors(ckpt, dtype=torch.float32)
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    loaded = comfy.lora.load_lora(state, key_map)
    expected = len(ckpt.text_encoder_lora())
    if len(loaded) != expected:
        raise CheckpointError(
            f"{ckpt.path}: only {len(loaded)} of the {expected} text-encoder LoRA layers fit this CLIP; "
            "DualAnoDiff checkpoints need an SD 1.x CLIP-L text encoder"
        )
    patched = clip.clone()
    patched.add_patches(loaded, strength)
    return patched
