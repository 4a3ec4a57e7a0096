"""Shared builders: a tiny dual UNet with random (non-zero) DualAnoDiff layers."""
from __future__ import annotations

import torch

from dualanodiff_core.runtime.diffusers_adapter import DualAnoDiffUNet, attention_modules, build_layers

from dualanodiff_core.model.layers import layer_key
from tiny_models import tiny_unet


def random_layers(unet, rank=4, saim=True, bcm=False, seed=1):
    layers = build_layers(unet, rank=rank, saim=saim, bcm=bcm)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layers.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for layer in layers.values():
            if layer.bcm is not None:
                layer.bcm.gamma.fill_(0.3)
    return layers


def dual_unet(rank=4, saim=True, bcm=False, seed=1):
    unet = tiny_unet()
    layers = random_layers(unet, rank, saim, bcm, seed)
    return DualAnoDiffUNet(unet, layers)


def layers_by_path(dual):
    return {p: dual.dual_layers[layer_key(p)] for p in attention_modules(dual.unet)}


def pair_inputs(n_pairs, seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n_pairs, 4, 8, 8, generator=gen)
    prompts = torch.randn(2, 77, 32, generator=gen)
    ctx = prompts.repeat(n_pairs, 1, 1)  # rows alternate global, anomaly prompt
    background = torch.randn(n_pairs, 4, 8, 8, generator=gen)
    return x, ctx, background
