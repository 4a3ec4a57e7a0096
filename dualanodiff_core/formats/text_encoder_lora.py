"""The shared text-encoder LoRA (one for both branches) on CLIP's self-attention, through peft.

Checkpoints name CLIP modules as CLIP checkpoints do (``text_model.encoder.layers.N.self_attn.q_proj``);
models whose module tree lacks the ``text_model.`` level (newer transformers) are matched by suffix.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError

ADAPTER = "dualanodiff"
TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def canonical_name(module_name: str) -> str:
    tail = module_name.split("encoder.layers.", 1)[1]
    return f"text_model.encoder.layers.{tail}"


def clip_attention_linears(text_encoder: nn.Module) -> dict:
    """``{canonical name: model module name}`` for q/k/v/out of every CLIP self-attention."""
    found = {}
    for name, module in text_encoder.named_modules():
        if "encoder.layers." in name and name.rsplit(".", 1)[-1] in TARGETS and ".self_attn." in name:
            if isinstance(module, nn.Linear) or hasattr(module, "base_layer"):
                found[canonical_name(name)] = name
    return found


def add_text_encoder_lora(text_encoder: nn.Module, rank: int) -> list:
    """Inject a fresh trainable LoRA (peft, alpha = rank so the scale is 1); returns its parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    names = clip_attention_linears(text_encoder)
    if not names:
        raise ValueError("no CLIP self-attention q/k/v/out_proj layers found in the text encoder")
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(names.values()), init_lora_weights="gaussian")
    inject_adapter_in_model(config, text_encoder, adapter_name=ADAPTER)
    return [p for n, p in text_encoder.named_parameters() if f".{ADAPTER}." in n]


def apply_text_encoder_lora(text_encoder: nn.Module, lora: dict, strength: float = 1.0) -> None:
    """Load ``{canonical name: (down, up)}`` into the text encoder's peft LoRA at ``strength``."""
    if not lora:
        return
    names = clip_attention_linears(text_encoder)
    unknown = set(lora) - set(names)
    if unknown:
        raise CheckpointError(
            f"text-encoder LoRA targets layers this CLIP model does not have: {sorted(unknown)[:4]}"
        )
    rank = next(iter(lora.values()))[0].shape[0]
    first = text_encoder.get_submodule(names[next(iter(lora))])
    if ADAPTER not in getattr(first, "lora_A", {}):
        add_text_encoder_lora(text_encoder, rank)
    with torch.no_grad():
        for canonical, (down, up) in lora.items():
            module = text_encoder.get_submodule(names[canonical])
            a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
            if a.shape != down.shape or b.shape != up.shape:
                raise CheckpointError(
                    f"text-encoder LoRA for {canonical} has shapes {tuple(down.shape)}/{tuple(up.shape)}, "
                    f"the model needs {tuple(a.shape)}/{tuple(b.shape)}"
                )
            a.copy_(down)
            b.copy_(up)
            module.set_scale(ADAPTER, strength)


def text_encoder_lora_tensors(text_encoder: nn.Module) -> dict:
    """Trained LoRA of the text encoder as ``{canonical name: (down, up)}``."""
    out = {}
    for canonical, name in clip_attention_linears(text_encoder).items():
        module = text_encoder.get_submodule(name)
        if ADAPTER in getattr(module, "lora_A", {}):
            out[canonical] = (module.lora_A[ADAPTER].weight.detach(), module.lora_B[ADAPTER].weight.detach())
    return out
