"""Where the demo loses quality, stage by stage: measurements that each isolate one stage.

- VAE round trip: defect pixels found by colour before and after encode/decode, on world defect images
  and on anomaly-branch targets (the defect on the mid-grey canvas), and the alignment IoU that
  perfectly aligned pairs keep through it (:func:`vae_alignment_ceiling`).
- Base model: do its unconditional samples show the world's objects (:func:`shape_fidelity`), with the
  world's texture and edge detail (:func:`detail`)? And what does its UNet keep of a real object handed
  to it half noised (:func:`denoised`)? (:func:`base_model_figures`)
- Few-shot training and sampling: defect area, stray defect colour and how many pieces the defect is
  broken into, in generated global images against the training images (:func:`defect_area_ratio`,
  :func:`stray_defect_colour`, :func:`defect_pieces`).
- Mask extraction: the extracted mask against the anomaly image's own defect pixels, separately from
  how well the two branches agree (:func:`extraction_stats`).

Every function takes images as (N, H, W, 3) arrays in [0, 1] and returns plain floats.
"""
from __future__ import annotations

import numpy as np
import torch

from . import world as demo_world

# Background pixels are grey (saturation below 0.12), objects and defects saturated (0.45 and more).
OBJECT_SATURATION = 0.25
BASE_PROMPT = "a photo of an object"  # the prompt the demo's base model was trained with


def object_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: pixels of an object (or a defect on it) rather than the grey background."""
    images = np.asarray(images, np.float32)
    hi, lo = images.max(-1), images.min(-1)
    return (hi - lo) / np.maximum(hi, 1e-6) > OBJECT_SATURATION


def shape_library(n: int = 4000, seed: int = 777) -> np.ndarray:
    """Object masks of ``n`` world samples, (n, H*W) float32: every shape, size, rotation, position."""
    rng = np.random.default_rng(seed)
    return np.stack([demo_world.sample(rng).object_mask.reshape(-1) for _ in range(n)]).astype(np.float32)


def shape_fidelity(images: np.ndarray, library: np.ndarray) -> np.ndarray:
    """Per image, the IoU of its object pixels with the nearest world object mask in ``library``:
    close to 1 for a world object, low for a blob or a ragged shape."""
    found = object_pixels(images).reshape(len(images), -1).astype(np.float32)
    inter = found @ library.T
    union = found.sum(1, keepdims=True) + library.sum(1)[None] - inter
    return (inter / np.maximum(union, 1)).max(1)


def defect_area_ratio(generated: np.ndarray, training_masks) -> float:
    """Mean defect area (by colour) of generated global images over the training masks' mean area."""
    area = demo_world.defect_pixels(generated).reshape(len(generated), -1).sum(1).mean()
    return float(area / np.mean([np.asarray(m).sum() for m in training_masks]))


def stray_defect_colour(generated: np.ndarray, masks: np.ndarray) -> float:
    """Share of the generated global images' defect-colour pixels that lie outside their extracted
    masks, pooled over all pairs (0 when no image shows defect colour)."""
    found = demo_world.defect_pixels(generated)
    total = found.sum()
    return float((found & ~np.asarray(masks, bool)).sum() / total) if total else 0.0


def defect_pieces(images: np.ndarray) -> dict:
    """How broken the defects are: over images that show defect colour, the mean number of its
    8-connected pieces and the share of images whose defect is one piece (a world scratch: 1 and 1)."""
    from ..masks.extract import label_components

    labels = label_components(torch.from_numpy(demo_world.defect_pixels(images)), 8)
    pieces = np.array([len(torch.unique(lab[lab > 0])) for lab in labels if (lab > 0).any()])
    if not len(pieces):
        return {"mean_pieces": 0.0, "one_piece_share": 0.0}
    return {"mean_pieces": round(float(pieces.mean()), 4), "one_piece_share": round(float(np.mean(pieces == 1)), 4)}


def extraction_stats(samples: dict) -> dict:
    """Mask extraction apart from branch alignment: IoU(extracted mask, the anomaly image's own defect
    pixels) and IoU(anomaly image's defect pixels, global image's defect pixels), each averaged over
    pairs where either side is non-empty."""
    fg_defect = demo_world.defect_pixels(samples["fg"])
    g_defect = demo_world.defect_pixels(samples["image"])

    def mean_iou(a, b):
        scored = [demo_world.iou(x, y) for x, y in zip(a, b) if x.any() or y.any()]
        return round(float(np.mean(scored)), 4) if scored else 0.0

    return {"extraction_iou": mean_iou(samples["mask"], fg_defect), "branch_iou": mean_iou(fg_defect, g_defect)}


@torch.no_grad()
def vae_round_trip(vae, images: np.ndarray) -> np.ndarray:
    """Images (N, H, W, 3) in [0, 1] through the VAE (posterior mean), back in [0, 1]."""
    from ..runtime.sampling import vae_decode, vae_encode

    x = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2) * 2 - 1
    return vae_decode(vae, vae_encode(vae, x)).permute(0, 2, 3, 1).numpy()


def vae_defect_iou(vae, defect: str, n: int = 64, seed: int = 5) -> dict:
    """Mean IoU of the defect found by colour before and after the VAE, on world defect images and on
    the anomaly branch's targets (the defect alone on mid grey); for the world images also the defect
    area after over before and :func:`defect_pieces` after."""
    world = demo_world.samples(n, seed=seed, defect=defect)
    images = np.stack([s.image for s in world])
    masks = np.stack([s.mask for s in world])
    anomaly = np.where(masks[..., None], images, 0.5).astype(np.float32)
    out = {}
    for name, x in (("global", images), ("anomaly", anomaly)):
        decoded = vae_round_trip(vae, x)
        after = demo_world.defect_pixels(decoded)
        out[name] = round(float(np.mean([demo_world.iou(a, b) for a, b in zip(demo_world.defect_pixels(x), after)])), 4)
        if name == "global":
            # how much thicker (area) and more broken (pieces) the VAE alone makes the defects
            out["area_ratio"] = round(float(after.sum() / demo_world.defect_pixels(x).sum()), 4)
            out["pieces"] = defect_pieces(decoded)
    return out


def vae_alignment_ceiling(vae, defect: str, threshold: float, n: int = 64, seed: int = 5) -> float:
    """The alignment IoU that perfectly aligned pairs reach after the VAE: world defect images and
    their anomaly targets (the defect on mid grey) each go through encode/decode, the mask is cut out
    of the decoded anomaly image as the demo cuts it, and compared with the decoded global image's
    defect colour. What is left below it is lost by training and sampling, not by the autoencoder."""
    from ..masks.extract import extract_masks

    world = demo_world.samples(n, seed=seed, defect=defect)
    images = np.stack([s.image for s in world])
    anomaly = np.where(np.stack([s.mask for s in world])[..., None], images, 0.5).astype(np.float32)
    decoded = torch.from_numpy(vae_round_trip(vae, anomaly)).permute(0, 3, 1, 2)
    masks = extract_masks(decoded, "threshold", threshold=threshold).binary[:, 0].numpy() > 0.5
    found = demo_world.defect_pixels(vae_round_trip(vae, images))
    return round(float(np.mean([demo_world.iou(m, f) for m, f in zip(masks, found)])), 4)


@torch.no_grad()
def base_samples(base, n: int = 64, steps: int = 25, guidance: float = 3.0, prompt: str = BASE_PROMPT,
                 seed: int = 5, scheduler: str = "ddim") -> np.ndarray:
    """Plain text-to-image samples of the base model (``scheduler``: a name of
    ``runtime.sampling.SCHEDULERS``), (n, H, W, 3) in [0, 1]."""
    import inspect

    from ..runtime.sampling import encode_prompts, latent_scale, make_scheduler, vae_decode

    emb = encode_prompts(base.tokenizer, base.text_encoder, [prompt, ""])
    sched = make_scheduler(scheduler, base.scheduler_config)
    sched.set_timesteps(steps)
    side = demo_world.SIZE // latent_scale(base.vae)
    latents = torch.randn((n, base.unet.config.in_channels, side, side), generator=torch.Generator().manual_seed(seed))
    latents = latents * sched.init_noise_sigma
    stochastic = "generator" in inspect.signature(sched.step).parameters
    step_kwargs = {"generator": torch.Generator().manual_seed(seed + 1)} if stochastic else {}
    for t in sched.timesteps:
        model_in = sched.scale_model_input(torch.cat([latents, latents]), t)
        out = base.unet(model_in, t, torch.cat([emb[1:].expand(n, -1, -1), emb[:1].expand(n, -1, -1)])).sample
        uncond, cond = out.chunk(2)
        latents = sched.step(uncond + guidance * (cond - uncond), t, latents, **step_kwargs).prev_sample
    return vae_decode(base.vae, latents).permute(0, 2, 3, 1).numpy()


def detail(images: np.ndarray) -> float:
    """Mean absolute Laplacian (3x3) of the luminance at half resolution, over object pixels: the
    stripes, checkers and edges an image set holds, without per-pixel grain (which the world's speckle
    texture is made of and no 4x autoencoder keeps). Smooth blobs score low against world objects."""
    x = torch.from_numpy(np.asarray(images, np.float32)).mean(-1)[:, None]
    x = torch.nn.functional.avg_pool2d(x, 2)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    lap = torch.nn.functional.conv2d(x, kernel)[:, 0].abs().numpy()
    objects = object_pixels(images)
    inner = (objects[:, ::2, ::2] & objects[:, 1::2, 1::2])[:, 1:-1, 1:-1]
    return float(lap[inner].mean()) if inner.any() else 0.0


@torch.no_grad()
def denoised(base, images: np.ndarray, t: int, steps: int = 25, seed: int = 1) -> np.ndarray:
    """World images noised to timestep ``t`` in latent space and denoised back by the base model (DDIM,
    no guidance): what its UNet keeps of an object it is handed at that noise level. At small ``t`` a
    good denoiser returns the VAE round trip."""
    from ..runtime.sampling import encode_prompts, make_scheduler, vae_decode, vae_encode

    emb = encode_prompts(base.tokenizer, base.text_encoder, [BASE_PROMPT])
    sched = make_scheduler("ddim", base.scheduler_config)
    sched.set_timesteps(steps)
    timesteps = [s for s in sched.timesteps if s <= t]
    latents = vae_encode(base.vae, torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2) * 2 - 1)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    latents = sched.add_noise(latents, noise, timesteps[0].reshape(1))
    for s in timesteps:
        latents = sched.step(base.unet(latents, s, emb.expand(len(latents), -1, -1)).sample, s, latents).prev_sample
    return vae_decode(base.vae, latents).permute(0, 2, 3, 1).numpy()


def base_model_figures(base, library: np.ndarray, n_real: int = 64) -> dict:
    """What the base model draws and what its UNet keeps, as shape fidelity and :func:`detail` over the
    real world images' detail: its plain samples (DDIM, and Euler ancestral); ``n_real`` world images
    through the VAE alone; the same images noised to t = 300 (signal still dominant) and 700 and denoised
    back. Where the round trip keeps shapes and detail and the denoised images lose them, the UNet is the
    limit."""
    real = np.stack([s.image for s in demo_world.samples(n_real, seed=9)])
    reference = detail(real)
    samples = base_samples(base)

    def figures(images):
        return {"shape_fidelity": round(float(shape_fidelity(images, library).mean()), 4),
                "detail_ratio": round(detail(images) / reference, 4)}

    shows_object = object_pixels(samples).reshape(len(samples), -1).any(1)
    return {**figures(samples), "object_share": round(float(shows_object.mean()), 4),
            # the same noise through Euler ancestral, the demo's sampler: fresh noise in every step
            "samples_euler_ancestral": figures(base_samples(base, scheduler="euler-a")),
            "real": figures(real), "vae_round_trip": figures(vae_round_trip(base.vae, real)),
            **{f"denoised_from_t{t}": figures(denoised(base, real, t)) for t in (300, 700)}}
