"""What the two loader nodes do: checkpoint or LoRA files -> patched MODEL (and CLIP)."""
from __future__ import annotations

from pathlib import Path

from .attention_sites import attention_sites
from .branch_layers import layers_from_checkpoint, layers_from_lora_pair, read_dual_checkpoint
from .clip_lora import apply_text_encoder_lora
from .comfy_patches import Strengths, apply_dual_patches


def load_dual_model(model, clip, checkpoint_path: str, strength_global: float, strength_anomaly: float,
                    strength_saim: float, strength_clip: float):
    """MODEL with per-branch LoRA, SAIM (and BCM layers when present), CLIP with the text-encoder LoRA."""
    ckpt = read_dual_checkpoint(checkpoint_path)
    bank = layers_from_checkpoint(ckpt, attention_sites(model))
    patched = apply_dual_patches(model, bank, Strengths(strength_global, strength_anomaly, strength_saim))
    return patched, apply_text_encoder_lora(clip, ckpt, strength_clip), ckpt


def _read_lora_file(path: str) -> dict:
    import comfy.utils

    return comfy.utils.load_torch_file(path, safe_load=True)


def load_lora_pair(model, global_path: str, anomaly_path: str, strength_global: float, strength_anomaly: float):
    """MODEL whose global and anomaly branches use two ordinary LoRA files (no SAIM, no BCM)."""
    sites = attention_sites(model)
    source = f"{Path(global_path).name} + {Path(anomaly_path).name}"
    bank = layers_from_lora_pair(model, _read_lora_file(global_path), _read_lora_file(anomaly_path), sites, source)
    return apply_dual_patches(model, bank, Strengths(strength_global, strength_anomaly, 0.0))
