"""BCM (background compensation): the BACKGROUND value and the reference pass before every UNet call.

BACKGROUND is a dict: ``samples`` (M, 4, h, w) VAE latents of the background image(s) WITHOUT the
0.18215 scale (exactly what ComfyUI's ``VAE.encode`` returns; they are not process_latent_in'ed),
``zero`` (1, 4, h, w) the latent of an all-zero image in the VAE's [-1, 1] input range (mid-grey
pixels), used for the negative prompt as in the reference, and ``image`` the background pixels.

The reference pass runs the UNet on ``bg + sigma * eps`` (k-diffusion space: ComfyUI's apply_model
divides by sqrt(sigma^2 + 1) itself, which gives the DDPM-noised latent the reference feeds), with
each pair's global-row conditioning, the global LoRA on all rows and no SAIM, and records attn1's
normed inputs; then the main pass fuses them. ``eps`` is fresh at every call (as in the reference)
yet reproducible: drawn from a generator seeded by the sampler seed and the call's sigma.
"""
from __future__ import annotations

import torch

from ..dualanodiff_core.errors import DualAnoDiffError
from ..dualanodiff_core.model.passes import PassContext
from .comfy_patches import PASS_KEY, find_patch_set

NEGATIVE = 1  # ComfyUI's cond_or_uncond value of the negative (uncond) chunk


def with_pass(transformer_options: dict, state: PassContext) -> dict:
    return {**transformer_options, PASS_KEY: state}


def reference_then_main(unet_call, x, timestep, c: dict, reference_x, reference_c: dict):
    """Run the BCM reference pass (output discarded), then the main pass that reads its tokens.

    ``unet_call(x, timestep, **c)`` is ComfyUI's apply_model (or the bare UNet in tests);
    ``reference_x``/``reference_c`` hold one row per pair (each pair's global row).
    """
    state = PassContext(reference=True)
    options = c.get("transformer_options", {})
    unet_call(reference_x, timestep[0::2], **{**reference_c, "transformer_options": with_pass(options, state)})
    main = PassContext(reference=False, background_tokens=state.background_tokens)
    return unet_call(x, timestep, **{**c, "transformer_options": with_pass(options, main)})


def reference_conditioning(c: dict, batch: int) -> dict:
    """The conditioning of the reference pass: every per-row tensor keeps its global rows; no ControlNet."""
    out = {}
    for key, value in c.items():
        if key in ("control", "transformer_options"):
            continue
        if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == batch:
            value = value[0::2]
        out[key] = value
    return out


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
    """``model_function_wrapper`` that runs the BCM reference pass before every UNet call."""

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
        reference_x = bg + sigma * _noise(self.seed, timestep, bg.shape, x)
        reference_c = reference_conditioning(c, x.shape[0])

        def run(call, a):
            return reference_then_main(call, a["input"], a["timestep"], a["c"], reference_x, reference_c)

        if self.previous is None:
            return run(apply_model, args)
        # another node's wrapper stays in charge of the main call; the reference pass runs inside it
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
