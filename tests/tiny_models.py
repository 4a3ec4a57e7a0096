"""Tiny SD-1.5-shaped models that the tests build (random weights, CPU, fp32).

They keep the structure that matters for DualAnoDiff: cross-attention transformer blocks in
down, mid and up blocks, attn1 (self) and attn2 (cross) in each, a CLIP text encoder.
"""
from __future__ import annotations

import torch

TINY_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)

TINY_CLIP_CONFIG = dict(
    vocab_size=1000,
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    max_position_embeddings=77,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    _randomise(unet, seed)
    return unet.eval()


def tiny_text_encoder(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig(**TINY_CLIP_CONFIG))
    _randomise(model, seed)
    return model.eval()
