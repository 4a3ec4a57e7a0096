"""One training step, the same for both runtimes: ``dualanodiff train`` (diffusers models) and the
ComfyUI Train node (ComfyUI's own MODEL, CLIP and VAE).

A runtime supplies its models as :class:`StepModels`; everything else of a step (which pairs, flips,
the latent sample, noise, timesteps, the loss) is computed here from a generator seeded by (seed,
step, process), so a resumed run takes exactly the steps an uninterrupted one would, and the two
runtimes take exactly the same steps. The initial weights (:func:`initial_layers`,
:func:`initial_text_encoder_lora`) are the same in both too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def step_generator(seed: int, step: int, process: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + process)


def batch_indices(args, n_pairs: int, step: int, process: int, g: torch.Generator) -> torch.Tensor:
    """Which pairs train at ``step``: drawn with replacement from ``g`` (``--batches random``), or the
    step's slice of a shuffled pass over all pairs (``epoch``; the pass's order depends only on seed,
    pass and process, so a resumed run draws what an uninterrupted one would)."""
    size = args.pairs_per_step
    if args.batches == "random":
        return torch.randint(n_pairs, (size,), generator=g)
    per_pass = math.ceil(n_pairs / size)
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(
        2 ** 40 + (args.seed * 1_000_003 + step // per_pass) * 1_009 + process))
    start = (step % per_pass) * size
    return order[start:start + size]


@dataclass
class StepModels:
    """What a runtime gives a step.

    - ``encoded``: :class:`~.latent_cache.EncodedPairs` over the frozen VAE (anything with diffusers'
      ``encode(x).latent_dist`` and ``config.scaling_factor``);
    - ``noise_schedule``: a diffusers ``DDPMScheduler`` (its ``add_noise`` and ``num_train_timesteps``);
    - ``prompts``: () -> (2, tokens, width) embeddings of the global and anomaly prompts, through the
      text encoder and its LoRA (with gradients where it trains);
    - ``eps``: (noisy latents, timestep per row, context per row, noised backgrounds or None) -> the
      predicted noise of the dual model;
    - ``encode_background``: (backgrounds in [-1, 1], generator) -> unscaled latents, for BCM."""

    encoded: object
    noise_schedule: object
    prompts: Callable
    eps: Callable
    device: torch.device
    weight_dtype: torch.dtype = torch.float32
    encode_background: Callable | None = None


def step_loss(args, data, flips_allowed: tuple, models: StepModels, step: int, process: int = 0) -> torch.Tensor:
    """The diffusion loss of ``step``: interleaved (global, anomaly) latents of the step's pairs, noised at
    one timestep per pair, the dual model's noise prediction against the noise (MSE)."""
    g = step_generator(args.seed, step, process)
    idx = batch_indices(args, len(data), step, process, g)
    n = len(idx)
    flips = torch.rand(2, n, generator=g) < 0.5
    flips &= torch.tensor(flips_allowed)[:, None]
    batch = data.batch(idx, flips[0], flips[1])
    schedule = models.noise_schedule
    with torch.no_grad():
        keys = [(int(i), bool(h), bool(v)) for i, h, v in zip(idx, flips[0], flips[1])]
        latents = models.encoded.latents(  # interleaved pairs
            lambda: torch.stack([batch["image"], batch["anomaly"]], dim=1).flatten(0, 1), keys, g).float()
        noise = torch.randn(latents.shape, generator=g).to(models.device)
        t_pairs = torch.randint(0, schedule.config.num_train_timesteps, (n,), generator=g).to(models.device)
        t_rows = t_pairs.repeat_interleave(2)
        noisy = schedule.add_noise(latents, noise, t_rows)
        background = None
        if args.bcm:
            bg = models.encode_background(batch["background"], g).float()
            bg_noise = torch.randn(bg.shape, generator=g).to(models.device)
            background = schedule.add_noise(bg, bg_noise, t_pairs).to(models.weight_dtype)
    emb = models.prompts()
    context = torch.stack([emb[0], emb[1]]).repeat(n, 1, 1)
    pred = models.eps(noisy.to(models.weight_dtype), t_rows, context, background)
    return F.mse_loss(pred.float(), noise)


def diffusers_order(path: str) -> tuple:
    """Sort key putting attention paths in the order diffusers' UNet registers its modules (down blocks,
    up blocks, then the mid block), the order in which :func:`initial_layers` draws their weights."""
    part = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}[path.split(".", 1)[0]]
    return (part, *[int(t) if t.isdigit() else t for t in path.split(".")[1:]])


def initial_layers(dims: list, rank: int, saim: bool, bcm: bool):
    """Fresh DualAnoDiff layers drawn from torch's global generator in diffusers' module order (seed it
    first); ``dims`` in any order."""
    from ..model.layers import build_dual_layers

    return build_dual_layers(sorted(dims, key=lambda d: diffusers_order(d.path)), rank, saim=saim, bcm=bcm)


def initial_text_encoder_lora(shapes: list, rank: int) -> dict:
    """``{canonical name: (down, up)}``: the text-encoder LoRA exactly as peft initialises it on a CLIP
    text model (drawing from torch's global generator, after :func:`initial_layers`). ``shapes``:
    ``(canonical name, in features, out features)`` of every CLIP self-attention q/k/v/out projection, in
    the module order of transformers' CLIP (k, v, q, out within a layer)."""
    from torch import nn

    from ..formats.text_encoder_lora import add_text_encoder_lora, text_encoder_lora_tensors

    model = nn.Module()
    for name, fan_in, fan_out in shapes:
        parent = model
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, nn.utils.skip_init(nn.Linear, fan_in, fan_out))  # draws nothing
    add_text_encoder_lora(model, rank)
    return {k: (down.detach().clone(), up.detach().clone()) for k, (down, up) in text_encoder_lora_tensors(model).items()}
