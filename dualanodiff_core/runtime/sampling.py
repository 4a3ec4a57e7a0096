"""Paired sampling with diffusers schedulers: both branches on shared timesteps, one UNet call per
step (``[uncond pairs | cond pairs]`` with classifier-free guidance)."""
from __future__ import annotations

import inspect

import torch

SCHEDULERS = {  # name: (diffusers class, config overrides, what it is)
    "pndm": ("PNDMScheduler", {}, "the reference's (SD 1.5's scheduler)"),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "dpmpp-2m": ("DPMSolverMultistepScheduler", {}, "DPM-Solver++ 2M"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler-simple": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"},
                     "Euler on ComfyUI's 'simple' schedule: the latents of ComfyUI's KSampler euler/simple for "
                     "the same seed when the steps divide 1000"),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler ancestral"),
    "ddpm": ("DDPMScheduler", {}, "DDPM"),
}


def scheduler_help() -> str:
    return "; ".join(f"{name}: {summary}" for name, (_, _, summary) in SCHEDULERS.items())


def make_scheduler(name: str, config: dict):
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides, _ = SCHEDULERS[name]
    scheduler = getattr(diffusers, cls).from_config({**dict(config), **overrides})
    if name == "euler-simple":
        scheduler.__class__ = _with_comfy_start(type(scheduler))
    return scheduler


_comfy_start_classes: dict = {}


def _with_comfy_start(base: type) -> type:
    """``base`` starting from noise of standard deviation sqrt(sigma_max^2 + 1), as ComfyUI does at full
    denoise (diffusers' trailing spacing starts from sigma_max)."""
    cls = _comfy_start_classes.get(base)
    if cls is None:
        def init_noise_sigma(self):
            return (self.sigmas.max() ** 2 + 1) ** 0.5

        cls = _comfy_start_classes[base] = type(f"ComfyStart{base.__name__}", (base,),
                                                {"init_noise_sigma": property(init_noise_sigma)})
    return cls


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


class _Held:
    """One branch's rows (0 global, 1 anomaly) held to clean latents where ``mask`` is 1, the way
    ComfyUI's KSampler treats a LATENT's noise_mask (so both paths give the same latents): the start
    is the clean latents plus the row's noise at the first level; before every UNet call the held
    area is the clean latents noised to the call's level with the row's initial noise, and after it
    the held area's prediction is the one that denoises to the clean latents exactly."""

    def __init__(self, rows: int, keep: tuple, noise: torch.Tensor):
        n = noise.shape[0] // 2
        clean, mask = (k.to(noise.device, noise.dtype) for k in keep)
        self.rows, self.clean, self.mask = rows, clean.expand(n, *clean.shape[1:]), mask
        self.noise = noise[rows::2]

    def _set(self, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[self.rows::2] = self.mask * value + (1 - self.mask) * x[self.rows::2]
        return out

    def start(self, latents, scheduler, t):
        alpha_bar = scheduler.alphas_cumprod[int(t)].to(latents.device, latents.dtype)
        out = latents.clone()  # the clean latents at the first level's scale (1 in sigma space)
        out[self.rows::2] += self.clean * scheduler.init_noise_sigma * alpha_bar.sqrt()
        return out

    def before_call(self, latents, scheduler, t):
        n = self.clean.shape[0]
        return self._set(latents, scheduler.add_noise(self.clean, self.noise, t.reshape(1).repeat(n)))

    def prediction(self, out, scheduler, t):
        kind = scheduler.config.get("prediction_type", "epsilon")
        if kind == "epsilon":
            return self._set(out, self.noise)
        if kind == "v_prediction":
            alpha_bar = scheduler.alphas_cumprod[int(t)].to(out.device, out.dtype)
            return self._set(out, alpha_bar.sqrt() * self.noise - (1 - alpha_bar).sqrt() * self.clean)
        raise ValueError(f"holding latents needs an epsilon or v prediction model, not {kind!r}")

    def finish(self, latents):
        return self._set(latents, self.clean)


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
    1 where the global rows are held to them (``generation.placement.keep_mask``), as ComfyUI holds a
    noise_mask (see ``_Held``); after the last step the held area is the clean latents themselves.
    keep_anomaly: the same for the anomaly rows (latents ``(N or 1, 4, h, w)``), e.g. its empty canvas
    outside the region, so that the anomaly branch draws its defect inside it.
    """
    param = next(dual.parameters())
    device, dtype = param.device, param.dtype
    n = len(generators)
    noise = _noise((2 * n, 4, *latent_size), generators, device, torch.float32, 2)
    scheduler.set_timesteps(steps, device=device)
    latents = noise * scheduler.init_noise_sigma
    held = [_Held(rows, k, noise) for rows, k in ((0, keep), (1, keep_anomaly)) if k is not None]
    for h in held:
        latents = h.start(latents, scheduler, scheduler.timesteps[0])
    # ancestral/stochastic schedulers draw noise in step(), here each pair's two rows from the pair's own
    # generator (the rows are interleaved), so that a pair does not depend on the batch it ran in
    step_kwargs = ({"generator": [g for g in generators for _ in range(2)]}
                   if "generator" in inspect.signature(scheduler.step).parameters else {})
    use_cfg = guidance != 1.0
    context = pair_context(cond[0], cond[1], n)
    if use_cfg:
        context = torch.cat([pair_context(uncond[0], uncond[-1], n), context])
    context = context.to(device, dtype)
    timesteps = list(scheduler.timesteps)
    for t in timesteps:
        for h in held:
            latents = h.before_call(latents, scheduler, t)
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
        for h in held:
            out = h.prediction(out, scheduler, t)
        latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
        if progress is not None:
            progress()
    for h in held:
        latents = h.finish(latents)
    return latents
