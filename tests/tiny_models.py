"""Tiny SD-1.5-shaped models that the tests build (random weights, CPU, fp32).

They keep the structure that matters for DualAnoDiff: cross-attention transformer blocks in
down, mid and up blocks, attn1 (self) and attn2 (cross) in each, a CLIP text encoder.
"""
from __future__ import annotations

import torch

from dualanodiff_core.formats.byte_tokenizer import byte_level_chars, write_byte_tokenizer  # noqa: F401

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


TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 8, 8),  # four blocks keep the latent scale factor at 8
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=64,
)


def tiny_vae(seed: int = 2):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in vae.parameters():  # small random weights keep the decoder's output in range
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return vae.eval()


def write_tiny_tokenizer(folder) -> None:
    """A 514-token byte-level CLIP vocabulary: every byte, every byte with </w>, start and end."""
    write_byte_tokenizer(folder)


def save_tiny_pipeline(folder) -> None:
    """A diffusers-layout SD-1-shaped model folder with tiny random weights."""
    import shutil
    from pathlib import Path

    folder = Path(folder)
    tiny_unet().save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    tiny_text_encoder().save_pretrained(folder / "text_encoder")
    write_tiny_tokenizer(folder / "tokenizer")
    bundled = Path(__file__).resolve().parents[1] / "dualanodiff_core" / "configs" / "sd15"
    (folder / "scheduler").mkdir(exist_ok=True)
    shutil.copy(bundled / "scheduler" / "scheduler_config.json", folder / "scheduler")
    shutil.copy(bundled / "model_index.json", folder)
