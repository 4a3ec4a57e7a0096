"""Paired sampling: pairing conditioning and latents, and the Paired KSampler itself.

Pairs are interleaved rows ``[g0, a0, g1, a1, ...]``. A CONDITIONING with two rows
``[global; anomaly]`` is tiled by ComfyUI over such a batch, so every global row sees the global
prompt and every anomaly row the anomaly prompt; a one-row negative reaches both branches.
"""
from __future__ import annotations

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
    """Interleave two LATENTs of N images into N pairs; with one LATENT, each image starts both branches."""
    g = global_latent["samples"]
    out = {k: v for k, v in global_latent.items() if k not in ("samples", "batch_index", "noise_mask")}
    if anomaly_latent is None:
        out["samples"] = duplicate_rows(g)
    else:
        out["samples"] = interleave(g, anomaly_latent["samples"])
    mask = global_latent.get("noise_mask")
    if mask is not None:
        out["noise_mask"] = duplicate_rows(mask) if mask.shape[0] == g.shape[0] else mask
    out[PAIRED] = True
    return out


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
