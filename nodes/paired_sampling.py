"""Paired sampling: pairing conditioning and latents, and the Paired KSampler itself.

Pairs are interleaved rows ``[g0, a0, g1, a1, ...]``. A CONDITIONING with two rows
``[global; anomaly]`` is tiled by ComfyUI over such a batch, so every global row sees the global
prompt and every anomaly row the anomaly prompt; a one-row negative reaches both branches.
"""
from __future__ import annotations

import torch

from ..dualanodiff_core.errors import DualAnoDiffError
from ..dualanodiff_core.model.pairing import deinterleave, duplicate_rows, interleave, stack_token_rows
from .background import apply_background
from .branch_conditioning import pair_options
from .comfy_patches import find_patch_set

PAIRED = "dualanodiff_pairs"  # LATENT key: the rows are already interleaved pairs


def pair_conditioning(global_cond: list, anomaly_cond: list) -> list:
    """One CONDITIONING whose tensors hold the global prompt in row 0 and the anomaly prompt in row 1;
    each prompt's options reach only its own rows (see branch_conditioning)."""
    if len(global_cond) != len(anomaly_cond):
        raise DualAnoDiffError(
            f"the global conditioning has {len(global_cond)} entries and the anomaly one {len(anomaly_cond)}; "
            "pair conditionings entry by entry (one prompt each is the usual case)"
        )
    paired = []
    for (g, g_opts), (a, a_opts) in zip(global_cond, anomaly_cond):
        if g.shape[0] != 1 or a.shape[0] != 1:
            raise DualAnoDiffError(
                f"pairing needs one prompt per branch, got conditioning batches of {g.shape[0]} and {a.shape[0]}"
            )
        paired.append([stack_token_rows(g, a), pair_options(g_opts, a_opts)])
    return paired


def is_paired(latent: dict) -> bool:
    return bool(latent.get(PAIRED))


def pair_latents(global_latent: dict, anomaly_latent: dict | None = None) -> dict:
    """Interleave two LATENTs of N images into N pairs; with one LATENT, each image starts both branches.

    A ``noise_mask`` (stock Set Latent Noise Mask: 1 = generate, 0 = keep the input latent) acts on the
    rows of its own LATENT: the global LATENT's mask holds the global rows to the input image outside
    it (placement on the user's image), while the anomaly rows are generated everywhere unless the
    anomaly LATENT brings a mask of its own."""
    g = global_latent["samples"]
    n = g.shape[0]
    out = {k: v for k, v in global_latent.items() if k not in ("samples", "batch_index", "noise_mask")}
    if anomaly_latent is None:
        out["samples"] = duplicate_rows(g)
    else:
        out["samples"] = interleave(g, anomaly_latent["samples"])
    g_mask = global_latent.get("noise_mask")
    a_mask = None if anomaly_latent is None else anomaly_latent.get("noise_mask")
    if g_mask is not None or a_mask is not None:
        like = g_mask if g_mask is not None else a_mask
        out["noise_mask"] = interleave(*(_per_image(m, n, like) for m in (g_mask, a_mask)))
    out[PAIRED] = True
    return out


def _per_image(mask, n: int, like):
    """A mask with one row per image (a single mask is shared); no mask means generate everywhere."""
    if mask is None:
        return torch.ones((n, *like.shape[1:]), dtype=like.dtype, device=like.device)
    if mask.shape[1:] != like.shape[1:]:
        raise DualAnoDiffError(f"the global and anomaly noise masks differ in size ({tuple(like.shape[1:])} and "
                               f"{tuple(mask.shape[1:])}); give masks of the same size")
    if mask.shape[0] not in (1, n):
        raise DualAnoDiffError(f"a noise mask of {mask.shape[0]} images for a LATENT of {n}; give one mask, or one "
                               "per image")
    return mask.expand(n, *mask.shape[1:])


def paired_latent(latent: dict) -> dict:
    """A LATENT of N pairs for sampling: already-paired latents pass, N images become N pairs."""
    if is_paired(latent):
        if latent["samples"].shape[0] % 2:
            raise DualAnoDiffError(f"a paired LATENT must have an even batch, got {latent['samples'].shape[0]}")
        return latent
    return pair_latents(latent)


def split_latents(latent: dict) -> tuple[dict, dict]:
    """A paired LATENT -> (global LATENT, anomaly LATENT), N images each."""
    samples = latent["samples"]
    if samples.shape[0] % 2:
        raise DualAnoDiffError(
            f"this LATENT has {samples.shape[0]} images, an odd number, so it is not made of (global, anomaly) pairs"
        )
    g, a = deinterleave(samples)
    base = {k: v for k, v in latent.items() if k not in ("samples", "batch_index", "noise_mask", PAIRED)}
    out_g, out_a = {**base, "samples": g}, {**base, "samples": a}
    mask = latent.get("noise_mask")
    if mask is not None and mask.shape[0] == samples.shape[0]:
        out_g["noise_mask"], out_a["noise_mask"] = deinterleave(mask)
    return out_g, out_a


def paired_ksample(model, seed, steps, cfg, sampler_name, scheduler, positive_global, positive_anomaly,
                   negative, latent_image, denoise=1.0, background=None):
    """Sample N pairs in one batch with shared timesteps; returns (global LATENT, anomaly LATENT)."""
    import nodes as comfy_nodes

    if find_patch_set(model) is None:
        raise DualAnoDiffError(
            "the Paired KSampler needs a MODEL from 'DualAnoDiff Loader' or 'DualAnoDiff Two-LoRA Loader'"
        )
    positive = pair_conditioning(positive_global, positive_anomaly)
    pairs = paired_latent(latent_image)
    if background is not None:
        model = apply_background(model, background, seed)
    sampled = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                          pairs, denoise=denoise)[0]
    return split_latents(sampled)
