"""Paired sampling with diffusers schedulers: both branches on shared timesteps, one UNet call per
step (``[uncond pairs | cond pairs]`` with classifier-free guidance)."""
from __future__ import annotations

import inspect

import torch

SCHEDULERS = {
    "pndm": "PNDMScheduler",          # the reference's default (SD 1.5's scheduler)
    "ddim": "DDIMScheduler",
    "dpmpp-2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "ddpm": "DDPMScheduler",
}


def make_scheduler(name: str, config: dict):
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def encode_prompts(tokenizer, text_encoder, prompts: list) -> torch.Tensor:
    """CLIP embeddings, padded to 77 tokens without attention mask (as the reference)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]


def pair_context(global_emb: torch.Tensor, anomaly_emb: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """``(2N, 77, C)``: the global prompt on even rows, the anomaly prompt on odd rows."""
    return torch.stack([global_emb, anomaly_emb]).repeat(n_pairs, 1, 1)


def vae_encode(vae, images: torch.Tensor, scaled: bool = True, generator=None) -> torch.Tensor:
    """Images in [-1, 1] -> latents; ``scaled=False`` gives the unscaled latents BCM backgrounds use."""
    param = next(vae.parameters())
    dist = vae.encode(images.to(param.device, param.dtype)).latent_dist
    latents = dist.sample(generator=generator) if generator is not None else dist.mean
    return latents * vae.config.scaling_factor if scaled else latents


def latent_scale(vae) -> int:
    """Pixels per latent cell: 8 for SD's VAE, less for VAEs with fewer blocks (the demo's has 4)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [0, 1], (B, 3, H, W), fp32 on the CPU."""
    param = next(vae.parameters())
    images = vae.decode(latents.to(param.device, param.dtype) / vae.config.scaling_factor).sample
    return ((images.float() + 1) / 2).clamp(0, 1).cpu()


def _noise(shape, generators, device, dtype, rows_per_generator: int):
    """Noise drawn per pair from that pair's own generator, so a pair's result does not depend on
    which batch it was sampled in."""
    per = [torch.randn((rows_per_generator, *shape[1:]), generator=g) for g in generators]
    return torch.cat(per).to(device, dtype)


def _hold_rows(latents, rows: int, keep, scheduler, next_t, generators):
    """The branch's rows (0 global, 1 anomaly) held to the kept latents where ``keep``'s mask is 1, at
    the noise level of ``next_t`` (the clean latents after the last step)."""
    clean, mask = (k.to(latents.device, latents.dtype) for k in keep)
    n = latents.shape[0] // 2
    clean = clean.expand(n, *clean.shape[1:])
    target = clean
    if next_t is not None:
        eps = _noise(clean.shape, generators, latents.device, latents.dtype, 1)
        target = scheduler.add_noise(clean, eps, next_t.reshape(1).repeat(n))
    held = latents.clone()
    held[rows::2] = mask * target + (1 - mask) * latents[rows::2]
    return held


@torch.no_grad()
def sample_pairs(
    dual,
    scheduler,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    generators: list,
    latent_size: tuple,
    steps: int = 50,
    guidance: float = 2.5,
    backgrounds: torch.Tensor | None = None,
    zero_background: torch.Tensor | None = None,
    noise_schedule=None,
    progress=None,
    keep: tuple | None = None,
    keep_anomaly: tuple | None = None,
) -> torch.Tensor:
    """Sample ``len(generators)`` pairs; returns interleaved scaled latents ``(2N, 4, h, w)``.

    cond/uncond: ``(2, 77, C)`` embeddings (global, anomaly). backgrounds: ``(N, 4, h, w)`` clean
    unscaled latents (BCM); each step they are noised afresh to the current timestep with
    ``noise_schedule`` (a DDPM scheduler), as the reference does; the unconditional half uses
    ``zero_background`` (the latent of an all-zero image in [-1, 1] space, as the reference).
    keep: ``(latents (N, 4, h, w), mask (N, 1, h, w))``, scaled clean latents of the user's images and
    1 where the global rows are held to them (``generation.placement.keep_mask``): after every step
    the global rows there are replaced by those latents noised to the step's level (fresh noise from
    each pair's generator), and after the last step by the clean latents themselves.
    keep_anomaly: the same for the anomaly rows (latents ``(N or 1, 4, h, w)``), e.g. its empty canvas
    outside the region, so that the anomaly branch draws its defect inside it.
    """
    param = next(dual.parameters())
    device, dtype = param.device, param.dtype
    n = len(generators)
    latents = _noise((2 * n, 4, *latent_size), generators, device, torch.float32, 2)
    scheduler.set_timesteps(steps, device=device)
    latents = latents * scheduler.init_noise_sigma
    # ancestral/stochastic schedulers draw noise in step(); others take no generator
    step_kwargs = {"generator": generators[0]} if "generator" in inspect.signature(scheduler.step).parameters else {}
    use_cfg = guidance != 1.0
    context = pair_context(cond[0], cond[1], n)
    if use_cfg:
        context = torch.cat([pair_context(uncond[0], uncond[-1], n), context])
    context = context.to(device, dtype)
    timesteps = list(scheduler.timesteps)
    for i, t in enumerate(timesteps):
        model_in = torch.cat([latents, latents]) if use_cfg else latents
        model_in = scheduler.scale_model_input(model_in, t)
        bg = None
        if backgrounds is not None:
            eps = _noise(backgrounds.shape, generators, device, torch.float32, 1)
            tt = t.reshape(1).repeat(n).to(device)
            bg = noise_schedule.add_noise(backgrounds.to(device, torch.float32), eps, tt)
            if use_cfg:
                zero = zero_background.to(device, torch.float32).expand_as(backgrounds)
                bg = torch.cat([noise_schedule.add_noise(zero, eps, tt), bg])
            bg = bg.to(dtype)
        out = dual(model_in.to(dtype), t, context, background=bg).sample.float()
        if use_cfg:
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance * (out_cond - out_uncond)
        latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
        next_t = timesteps[i + 1] if i + 1 < len(timesteps) else None
        for rows, held in ((0, keep), (1, keep_anomaly)):
            if held is not None:
                latents = _hold_rows(latents, rows, held, scheduler, next_t, generators)
        if progress is not None:
            progress()
    return latents
