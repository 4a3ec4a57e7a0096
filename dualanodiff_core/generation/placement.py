"""Defects placed on the user's own normal images: the region arithmetic of placed sampling.

Given a normal image I and a region R (True where the defect may go):

- the global branch's latent is held to I's latent outside R at every step (blended-latent style):
  :func:`keep_mask` is R brought down to latent size and grown by a margin, then inverted;
- the final global image is pasted back onto I with an edge feathered *inside* R
  (:func:`paste_back`), so every pixel outside R is I's own, whatever the VAE did;
- the mask is the extracted anomaly mask intersected with R (:func:`mask_in_region`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DualAnoDiffError


def check_region(region: np.ndarray, image_shape: tuple, where: str) -> np.ndarray:
    """A boolean (H, W) region of the image's size with at least one pixel; clear errors otherwise."""
    region = np.asarray(region)
    if region.ndim == 3:
        region = region[..., 0]
    if region.shape != tuple(image_shape[:2]):
        raise DualAnoDiffError(f"{where}: region is {region.shape[1]}x{region.shape[0]} pixels but the image is "
                               f"{image_shape[1]}x{image_shape[0]}; give a region of the image's size")
    region = region > (127 if region.dtype == np.uint8 else 0.5)
    if not region.any():
        raise DualAnoDiffError(f"{where}: the region is empty; mark where the defect may go (white = allowed)")
    return region


def keep_mask(region: torch.Tensor, latent_size: tuple, margin: int = 1) -> torch.Tensor:
    """``(N, 1, h, w)`` float: 1 where the global latent is held to the input image (outside R grown by
    ``margin`` latent cells), 0 where it is generated. ``region``: ``(N, 1, H, W)`` bool or 0/1."""
    r = F.adaptive_max_pool2d(region.float(), latent_size)  # a cell touched by R belongs to R
    if margin > 0:
        r = F.max_pool2d(r, 2 * margin + 1, stride=1, padding=margin)
    return 1.0 - r


def feather_alpha(region: np.ndarray, feather: int) -> np.ndarray:
    """``(H, W)`` float in [0, 1]: 0 outside ``region`` exactly, rising over ``feather`` pixels inside its
    edge to 1 (a chessboard-distance ramp)."""
    r = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32))[None, None]
    alpha = r.clone()
    inside = r
    for _ in range(max(0, feather - 1)):
        inside = -F.max_pool2d(-inside, 3, stride=1, padding=1)  # erode by one pixel (image edge counts as inside)
        alpha = alpha + inside
    alpha = alpha / max(1, feather)
    return (alpha * r).clamp(0, 1)[0, 0].numpy()


def paste_back(generated: np.ndarray, image: np.ndarray, region: np.ndarray, feather: int = 3) -> np.ndarray:
    """uint8 ``(H, W, 3)``: ``generated`` inside ``region`` (blended over ``feather`` pixels at its edge),
    ``image`` itself everywhere else, bit for bit."""
    if generated.shape != image.shape:
        raise DualAnoDiffError(f"generated image {generated.shape} and input image {image.shape} differ in size")
    alpha = feather_alpha(region, feather)[..., None]
    blended = np.rint(image.astype(np.float32) * (1 - alpha) + generated.astype(np.float32) * alpha)
    return np.where(alpha > 0, blended.clip(0, 255).astype(np.uint8), image)


def mask_in_region(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The extracted anomaly mask cut to the region (same dtype as ``mask``)."""
    return np.where(region, mask, np.zeros_like(mask))
