"""An independent reference for paired sampling in ComfyUI: the diffusers DualAnoDiffUNet driven by
a hand-written copy of what ComfyUI's KSampler computes with sampler "euler" and scheduler "simple"
(SD 1.x eps-prediction, classifier-free guidance on the denoised prediction). Nothing here calls the
node pack or ComfyUI; rows are laid out by hand as the method defines them (pairs interleaved
``[g0, a0, g1, a1, ...]``, global prompt on even rows, anomaly prompt on odd rows, the negative on all)."""
from __future__ import annotations

import torch

SD_LATENT_SCALE = 0.18215


def sd15_sigmas() -> torch.Tensor:
    """sigma_t = sqrt((1 - alphabar_t) / alphabar_t) for SD 1.x's 1000-step scaled-linear schedule."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def simple_schedule(steps: int) -> list[int]:
    """Timesteps of ComfyUI's "simple" scheduler: evenly spaced from 999 down, one per step."""
    return [999 - int(i * 1000 / steps) for i in range(steps)]


def comfy_noise(shape, seed: int) -> torch.Tensor:
    """The initial noise ComfyUI draws for a latent batch: one CPU generator seeded with `seed`."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def interleave_rows(global_rows: torch.Tensor, anomaly_rows: torch.Tensor) -> torch.Tensor:
    out = torch.empty((2 * global_rows.shape[0], *global_rows.shape[1:]), dtype=global_rows.dtype)
    out[0::2], out[1::2] = global_rows, anomaly_rows
    return out


@torch.no_grad()
def reference_pairs(dual, latents: torch.Tensor, seed: int, steps: int, cfg: float,
                    prompt_global: torch.Tensor, prompt_anomaly: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Sample interleaved pairs ``latents`` (2N, 4, h, w) as ComfyUI's KSampler would; returns (2N, 4, h, w).

    prompt_*: (1, T, C) text embeddings; negative: (1, T, C), shared by both branches."""
    n_rows = latents.shape[0]
    table = sd15_sigmas()
    timesteps = simple_schedule(steps)
    sigmas = [float(table[t]) for t in timesteps] + [0.0]
    cond = torch.empty((n_rows, *prompt_global.shape[1:]))
    cond[0::2], cond[1::2] = prompt_global[0], prompt_anomaly[0]
    context = torch.cat([negative.expand_as(cond), cond])

    x = latents * SD_LATENT_SCALE + comfy_noise(latents.shape, seed) * (1 + sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(timesteps):
        sigma = sigmas[i]
        scaled = x / (sigma ** 2 + 1) ** 0.5
        eps = dual(torch.cat([scaled, scaled]), torch.full((2 * n_rows,), float(t)), context).sample
        eps_uncond, eps_cond = eps.chunk(2)
        denoised_uncond, denoised_cond = x - sigma * eps_uncond, x - sigma * eps_cond
        denoised = denoised_uncond + cfg * (denoised_cond - denoised_uncond)
        x = x + (x - denoised) / sigma * (sigmas[i + 1] - sigma)
    return x / SD_LATENT_SCALE
