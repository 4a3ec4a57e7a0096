"""Where DualAnoDiff acts in a ComfyUI UNet: every attn1/attn2 of every transformer block.

Block ids come from the model itself (its module tree and ``comfy.utils.unet_to_diffusers``),
never from a table: tiny test models and SD 1.5 have different ids.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..dualanodiff_core.model.layers import AttentionDims

_BLOCK_PATH = re.compile(
    r"^(?P<part>input_blocks|middle_block|output_blocks)(?:\.(?P<id>\d+))?\.\d+\.transformer_blocks\.(?P<index>\d+)$"
)
_PART = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
ATTENTIONS = ("attn1", "attn2")


@dataclass(frozen=True)
class AttentionSite:
    block: tuple          # ComfyUI's (block name, block id, transformer index), as in patch keys
    attention: str        # "attn1" (self) or "attn2" (cross)
    comfy_path: str       # e.g. input_blocks.1.1.transformer_blocks.0.attn1
    diffusers_path: str   # e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1
    query_dim: int
    context_dim: int
    inner_dim: int

    @property
    def dims(self) -> AttentionDims:
        return AttentionDims(self.diffusers_path, self.query_dim, self.context_dim, self.inner_dim)


def block_key(extra_options: dict) -> tuple:
    """The ``(name, id, transformer index)`` of the block a patch is called for."""
    block = extra_options.get("block") or (None, None)
    return (block[0], block[1], extra_options.get("block_index", 0))


def attention_sites(model_patcher) -> list:
    """All attention sites of a ComfyUI SD1.x model (a ModelPatcher), in module order."""
    import comfy.utils

    base = model_patcher.model
    unet = base.diffusion_model
    unet_config = base.model_config.unet_config
    to_comfy = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> comfy key
    to_diffusers = {v: k for k, v in to_comfy.items()}
    if not to_diffusers:
        raise ValueError("DualAnoDiff needs a Stable Diffusion 1.x UNet; this model has no UNet layout ComfyUI can map")

    sites = []
    for name, module in unet.named_modules():
        m = _BLOCK_PATH.match(name)
        if not m or type(module).__name__ != "BasicTransformerBlock":
            continue
        part = _PART[m["part"]]
        block = (part, 0 if part == "middle" else int(m["id"]), int(m["index"]))
        for attention in ATTENTIONS:
            attn = getattr(module, attention, None)
            if attn is None:
                continue
            comfy_path = f"{name}.{attention}"
            diffusers_key = to_diffusers.get(f"{comfy_path}.to_q.weight")
            if diffusers_key is None:
                raise ValueError(f"no diffusers name for ComfyUI module {comfy_path}; is this an SD 1.x model?")
            sites.append(AttentionSite(
                block=block,
                attention=attention,
                comfy_path=comfy_path,
                diffusers_path=diffusers_key[: -len(".to_q.weight")],
                query_dim=attn.to_q.in_features,
                context_dim=attn.to_k.in_features,
                inner_dim=attn.to_q.out_features,
            ))
    if not sites:
        raise ValueError("this model has no transformer blocks with attention; DualAnoDiff needs an SD 1.x UNet")
    return sites
