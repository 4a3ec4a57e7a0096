"""The Training Pairs node's work: few-shot pairs from a folder (as ``dualanodiff train`` reads it) or
from ComfyUI IMAGE + MASK batches."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..dualanodiff_core.errors import DualAnoDiffError
from .training_run import TrainingPairs


def _folder(folder: str) -> Path:
    import folder_paths

    folder = folder.strip()
    if not folder:
        raise DualAnoDiffError("no pairs: give a folder (under ComfyUI's input folder) or connect images and masks")
    path = Path(folder) if os.path.isabs(folder) else Path(folder_paths.get_input_directory()) / folder
    if not path.is_dir():
        raise DualAnoDiffError(f"{path} is not a folder: give an MVTec category (with a defect type) or a folder "
                               "holding images/ and masks/, under ComfyUI's input folder")
    return path


def pairs_from_folder(folder: str, defect: str, split: str) -> TrainingPairs:
    """An MVTec category's few shots of ``defect``, or ``images/`` matched to ``masks/`` by name; every
    pair checked as ``dualanodiff train`` checks it."""
    from ..dualanodiff_core.training.data import check_pairs, folder_pairs, mvtec_pairs

    path = _folder(folder)
    if defect.strip():
        files = mvtec_pairs(path, defect.strip(), split)
        category = path.resolve().name
    elif (path / "images").is_dir() and (path / "masks").is_dir():
        files, category = folder_pairs(path / "images", path / "masks"), None
    else:
        raise DualAnoDiffError(f"{path} holds neither images/ and masks/ nor (with a defect type) an MVTec "
                               "category's test/<defect>: give the defect type, or make the two folders")
    check_pairs(files)
    return TrainingPairs(source=str(path) + (f" ({defect.strip()})" if defect.strip() else ""), files=files,
                         names=[p.image.name for p in files], category=category)


def pairs_from_tensors(images, masks) -> TrainingPairs:
    """Pairs from an IMAGE batch (B, H, W, 3) in [0, 1] and a MASK batch (B, H, W), white on the defect."""
    from PIL import Image

    from ..dualanodiff_core.training.data import check_image_pairs

    if images is None or masks is None:
        raise DualAnoDiffError("connect both images and masks (a mask per image, painted where the defect is)")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[0] not in (1, images.shape[0]):
        raise DualAnoDiffError(f"{images.shape[0]} images but {masks.shape[0]} masks: give one mask per image")
    masks = masks.expand(images.shape[0], *masks.shape[1:])
    to_uint8 = lambda t: (t.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # noqa: E731
    pil_images = [Image.fromarray(to_uint8(im)[..., :3]) for im in images]
    pil_masks = [Image.fromarray(np.where(to_uint8(m) > 127, 255, 0).astype(np.uint8)) for m in masks]
    names = [f"image {i}" for i in range(len(pil_images))]
    check_image_pairs(pil_images, pil_masks, names)
    return TrainingPairs(source=f"{len(names)} images from the graph", images=pil_images, masks=pil_masks, names=names)


def preview(pairs: TrainingPairs) -> torch.Tensor:
    """(N, H, W, 3) images with their masks tinted red, all at the first pair's size."""
    from PIL import Image

    def read(path, mode):
        with Image.open(path) as im:
            return im.convert(mode)

    if pairs.files is not None:
        opened = [(read(p.image, "RGB"), read(p.mask, "L")) for p in pairs.files]
    else:
        opened = list(zip(pairs.images, pairs.masks))
    size = opened[0][0].size
    out = []
    for im, m in opened:
        x = np.asarray(im.resize(size), np.float32) / 255
        a = (np.asarray(m.resize(size, Image.NEAREST)) > 127)[..., None]
        out.append(np.where(a, 0.5 * x + 0.5 * np.array([1.0, 0.0, 0.0], np.float32), x))
    return torch.from_numpy(np.stack(out))


def object_masks(pairs: TrainingPairs, resolution: int, resample: str, masks=None, u2net=None) -> list | None:
    """BCM's object masks (1 = object), one per pair at ``resolution``: a MASK batch resized as
    ``dualanodiff train --object-masks`` resizes mask files, or U-2-Net's saliency of the pair images
    as ``--u2net`` computes it. None when neither is given (no BCM)."""
    from PIL import Image

    from ..dualanodiff_core.training.data import _mask_at

    if masks is None and u2net is None:
        return None
    if masks is not None:
        m = masks if masks.ndim == 3 else masks.reshape(-1, *masks.shape[-2:])
        n = len(pairs.names)
        if m.shape[0] not in (1, n):
            raise DualAnoDiffError(f"bcm_object_masks holds {m.shape[0]} masks for {n} training pairs: give one "
                                   "object mask per pair, in the pairs' order")
        height, width = m.shape[-2:]
        wrong = [f"{name} is {w}x{h}" for name, (w, h) in zip(pairs.names, pairs.sizes()) if (w, h) != (width, height)]
        if wrong:
            raise DualAnoDiffError(f"bcm_object_masks are {width}x{height} px but {', '.join(wrong)}: give each pair "
                                   "an object mask of its image's size")
        m = m.expand(n, height, width)
        to_uint8 = (m.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return [_mask_at(Image.fromarray(a), resolution) for a in to_uint8]
    from ..dualanodiff_core.masks.u2net import saliency

    images = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in pairs.rgb(resolution, resample)])
    with torch.no_grad():
        return list(saliency(u2net, images)[:, 0].cpu())
