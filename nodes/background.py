"""BCM (background compensation): the BACKGROUND value and the background rows of every UNet call.

BACKGROUND is a dict: ``samples`` (M, 4, h, w) VAE latents of the background image(s) WITHOUT the
0.18215 scale (exactly what ComfyUI's ``VAE.encode`` returns; they are not process_latent_in'ed),
``zero`` (1, 4, h, w) the latent of an all-zero image in the VAE's [-1, 1] input range (mid-grey
pixels), used for the negative prompt as in the reference, and ``image`` the background pixels.

Every UNet call runs each pair with a third row, its background ``bg + sigma * eps`` (k-diffusion
space: ComfyUI's apply_model divides by sqrt(sigma^2 + 1) itself, which gives the DDPM-noised latent
the reference feeds), with the pair's global-row conditioning, no ControlNet, the global LoRA and no
SAIM: the method's reference pass, run in lockstep with the pair in one batch (one UNet call is
cheaper than two smaller ones), whose attn1 inputs the global row fuses (see branch_math). Rows stay
grouped by chunk, so another pack that reads ``cond_or_uncond`` sees whole chunks. ``eps`` is fresh at
every call (as in the reference) yet reproducible: drawn from a generator seeded by the sampler seed
and the call's sigma.
"""
from __future__ import annotations

import torch

from ..dualanodiff_core.errors import DualAnoDiffError
from ..dualanodiff_core.model.pairing import with_background_rows, without_background_rows
from ..dualanodiff_core.model.passes import BACKGROUND_PASS
from .comfy_patches import PASS_KEY, find_patch_set

NEGATIVE = 1  # ComfyUI's cond_or_uncond value of the negative (uncond) chunk


def run_with_background(unet_call, x, timestep, c: dict, background_x):
    """One UNet call on BCM triples: the pairs of ``x`` each with its row of ``background_x``; returns
    the output of the pair rows.

    ``unet_call(x, timestep, **c)`` is ComfyUI's apply_model (or the bare UNet in tests).
    """
    rows = x.shape[0]
    triples = background_conditioning(c, rows)
    options = dict(c.get("transformer_options", {}))
    sigmas = options.get("sigmas")
    if torch.is_tensor(sigmas) and sigmas.ndim == 1 and sigmas.shape[0] == rows:
        options["sigmas"] = with_background_rows(sigmas)
    triples["transformer_options"] = {**options, PASS_KEY: BACKGROUND_PASS}
    if torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.shape[0] == rows:
        timestep = with_background_rows(timestep)
    out = unet_call(with_background_rows(x, background_x.to(x)), timestep, **triples)
    return without_background_rows(out)


def background_conditioning(c: dict, rows: int) -> dict:
    """The conditioning of the triples: every per-row tensor gives the background row its global
    row's value; ControlNet outputs give it nothing (as the method's reference pass)."""
    out = {}
    for key, value in c.items():
        if key == "transformer_options":
            continue
        if key == "control" and isinstance(value, dict):
            value = {name: [_without_control(t, rows) for t in tensors] for name, tensors in value.items()}
        elif torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == rows:
            value = with_background_rows(value)
        out[key] = value
    return out


def _without_control(t, rows: int):
    if not torch.is_tensor(t) or t.shape[0] != rows:
        return t
    return with_background_rows(t, torch.zeros_like(t[0::2]))


def _noise(seed: int, sigma: torch.Tensor, shape, like: torch.Tensor) -> torch.Tensor:
    sigma_bits = int(round(float(sigma.flatten()[0]) * 1e6))
    generator = torch.Generator(device="cpu").manual_seed((int(seed) * 1_000_003 + sigma_bits) % (2**63))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _per_pair(latents: torch.Tensor, n_pairs: int) -> torch.Tensor:
    if latents.shape[0] == n_pairs:
        return latents
    if latents.shape[0] == 1:
        return latents.expand(n_pairs, *latents.shape[1:])
    raise DualAnoDiffError(
        f"the BACKGROUND holds {latents.shape[0]} images but the sampler runs {n_pairs} pairs; give one "
        "background image, or exactly one per pair"
    )


class BackgroundWrapper:
    """``model_function_wrapper`` that gives every UNet call its BCM background rows."""

    def __init__(self, background: dict, seed: int, previous=None):
        self.background = background
        self.seed = seed
        self.previous = previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, apply_model, args: dict):
        x, timestep, c = args["input"], args["timestep"], args["c"]
        chunks = list(args.get("cond_or_uncond") or [0])
        if x.shape[0] % (2 * len(chunks)):
            raise DualAnoDiffError(
                f"DualAnoDiff BCM: a UNet batch of {x.shape[0]} rows in {len(chunks)} chunks is not made of "
                "whole (global, anomaly) pairs"
            )
        n_pairs = x.shape[0] // len(chunks) // 2
        latents = self.background["samples"]
        if tuple(latents.shape[-2:]) != tuple(x.shape[-2:]):
            raise DualAnoDiffError(
                f"the BACKGROUND latent is {latents.shape[-1] * 8}x{latents.shape[-2] * 8} px but the image being "
                f"generated is {x.shape[-1] * 8}x{x.shape[-2] * 8} px; resize the background image to the "
                "generation size (area conditioning is not supported with BCM)"
            )
        rows = [_per_pair(self.background["zero"] if chunk == NEGATIVE else latents, n_pairs) for chunk in chunks]
        bg = torch.cat(rows).to(device=x.device, dtype=x.dtype)
        sigma = timestep[0::2].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        background_x = bg + sigma * _noise(self.seed, timestep, bg.shape, x)

        def run(call, a):
            return run_with_background(call, a["input"], a["timestep"], a["c"], background_x)

        if self.previous is None:
            return run(apply_model, args)
        # another node's wrapper stays in charge and sees the pairs; the background rows join inside it
        return self.previous(lambda inp, t, **kw: run(apply_model, {"input": inp, "timestep": t, "c": kw}), args)


def apply_background(model_patcher, background: dict, seed: int):
    """A clone of a DualAnoDiff MODEL that runs BCM with ``background`` (chains any existing wrapper)."""
    patch_set = find_patch_set(model_patcher)
    if patch_set is None:
        raise DualAnoDiffError("a BACKGROUND needs a MODEL from the DualAnoDiff loader")
    if not patch_set.bank.has_bcm:
        raise DualAnoDiffError(
            f"{patch_set.bank.source} has no BCM weights, so a BACKGROUND cannot be used with it; "
            "disconnect the background or load a BCM checkpoint"
        )
    patched = model_patcher.clone()
    previous = patched.model_options.get("model_function_wrapper")
    patched.set_model_unet_function_wrapper(BackgroundWrapper(background, seed, previous))
    return patched


def _crop_to_multiple(images: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    h, w = images.shape[1] // multiple * multiple, images.shape[2] // multiple * multiple
    if h == 0 or w == 0:
        raise DualAnoDiffError(f"the background image is too small ({images.shape[2]}x{images.shape[1]} px)")
    y, x = (images.shape[1] - h) // 2, (images.shape[2] - w) // 2
    return images[:, y:y + h, x:x + w]


def background_pixels(images: torch.Tensor, mask: torch.Tensor | None = None, u2net=None) -> torch.Tensor:
    """The object blacked out, the background kept (IMAGE layout (B, H, W, 3) in [0, 1]).

    ``mask`` (object = 1) wins over ``u2net`` (its saliency is the object mask, as in the reference).
    """
    import torch.nn.functional as F

    images = images[..., :3]
    if mask is not None:
        m = mask if mask.ndim == 3 else mask.reshape(-1, *mask.shape[-2:])
        m = m.to(images)
        if tuple(m.shape[-2:]) != tuple(images.shape[1:3]):
            m = F.interpolate(m[:, None], size=images.shape[1:3], mode="bilinear", align_corners=False)[:, 0]
        if m.shape[0] not in (1, images.shape[0]):
            raise DualAnoDiffError(f"{m.shape[0]} masks for {images.shape[0]} images: give one mask or one per image")
        return images * (1 - m.clamp(0, 1))[..., None]
    if u2net is None:
        raise DualAnoDiffError(
            "DualAnoDiff Background needs the object's mask: connect a MASK, or a U-2-Net model from the "
            "'DualAnoDiff U-2-Net Loader' (weights u2net.pth or u2netp.pth in models/u2net)"
        )
    from ..dualanodiff_core.masks.u2net import background_from_saliency, saliency

    bchw = images.permute(0, 3, 1, 2)
    return background_from_saliency(bchw, saliency(u2net, bchw)).permute(0, 2, 3, 1)


def encode_background(vae, images: torch.Tensor, mask=None, u2net=None) -> tuple[dict, torch.Tensor]:
    """BACKGROUND value and the background pixels for a preview."""
    if mask is not None and tuple(mask.shape[-2:]) == tuple(images.shape[1:3]):
        mask = _crop_to_multiple(mask.reshape(-1, *mask.shape[-2:]))
    pixels = background_pixels(_crop_to_multiple(images), mask, u2net)
    samples = vae.encode(pixels)
    zero = vae.encode(torch.full((1, *pixels.shape[1:]), 0.5, dtype=pixels.dtype, device=pixels.device))
    return {"samples": samples.float().cpu(), "zero": zero.float().cpu(), "image": pixels}, pixels
