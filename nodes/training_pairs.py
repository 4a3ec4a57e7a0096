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
