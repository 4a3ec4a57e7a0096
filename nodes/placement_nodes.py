"""The Paste Back node's work: ComfyUI IMAGE/MASK batches through the core's placement arithmetic."""
from __future__ import annotations

import torch

from ..dualanodiff_core.errors import DualAnoDiffError
from ..dualanodiff_core.generation.placement import check_region, mask_in_region, paste_back


def _rows(t: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if t.shape[0] not in (1, n):
        raise DualAnoDiffError(f"{what} holds {t.shape[0]} items for {n} images; give one, or one per image")
    return t.expand(n, *t.shape[1:])


def paste_back_batch(generated, image, region, anomaly_mask, feather: int):
    """(images (B, H, W, 3), masks (B, H, W)): ``generated`` pasted onto ``image`` inside ``region``."""
    n = generated.shape[0]
    if generated.shape[1:] != image.shape[1:]:
        raise DualAnoDiffError(f"generated images are {generated.shape[2]}x{generated.shape[1]} but your images "
                               f"{image.shape[2]}x{image.shape[1]}; sample from your images' own latents")
    image, region, anomaly_mask = _rows(image, n, "image"), _rows(region, n, "region"), _rows(anomaly_mask, n, "anomaly_mask")
    out_images, out_masks = [], []
    for k in range(n):
        src = image[k].cpu().numpy()
        r = check_region(region[k].cpu().numpy(), src.shape, f"region {k}")
        if anomaly_mask[k].shape != region[k].shape:
            raise DualAnoDiffError(f"anomaly_mask {k} is {tuple(anomaly_mask[k].shape)} but the region "
                                   f"{tuple(region[k].shape)}; extract the mask from images of the same size")
        out_images.append(torch.from_numpy(paste_back(generated[k].cpu().numpy().astype(src.dtype), src, r, feather)))
        out_masks.append(torch.from_numpy(mask_in_region(anomaly_mask[k].cpu().numpy(), r)))
    return torch.stack(out_images).to(image.device), torch.stack(out_masks).to(anomaly_mask.device)
