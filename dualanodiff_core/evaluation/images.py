"""Reading images and masks at the evaluation resolution, and checking them without decoding.

Images are squashed to ``size x size`` (bilinear with PIL's antialiasing; MVTec AD images are square),
kept as uint8 (3, H, W) tensors so hundreds of pairs fit in memory. Masks are resized the same way as
grey levels and binarised at half coverage, so a resized mask keeps the area the original marks
(the reference reads test masks with a bilinear resize followed by an integer cast, which keeps only
fully covered pixels).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import DualAnoDiffError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def image_files(folder: Path) -> list:
    """Image files of a folder, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def natural_key(path: Path) -> tuple:
    """Sort key that puts 2.png before 10.png (numbers compared as numbers)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", Path(path).name))


def header_size(path: Path) -> tuple:
    """(width, height) from the file header; a clear error for a missing or unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DualAnoDiffError(f"{path} does not exist") from None
    except Exception as exc:
        raise DualAnoDiffError(f"{path} is not a readable image ({exc}); replace or remove it") from None


def _open(path: Path, mode: str, size: int):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert(mode).resize((size, size), Image.BILINEAR)
    except Exception as exc:
        raise DualAnoDiffError(f"{path} is not a readable image ({exc}); replace or remove it") from None


def load_image(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) uint8."""
    return torch.from_numpy(np.asarray(_open(path, "RGB", size), dtype=np.uint8).copy()).permute(2, 0, 1)


def load_mask(path: Path | None, size: int) -> torch.Tensor:
    """(1, size, size) bool; ``None`` gives an empty mask (a normal image)."""
    if path is None:
        return torch.zeros(1, size, size, dtype=torch.bool)
    return torch.from_numpy(np.asarray(_open(path, "L", size), dtype=np.uint8) >= 128)[None]


def load_images(paths: list, size: int) -> torch.Tensor:
    if not paths:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    return torch.stack([load_image(p, size) for p in paths])


def load_masks(paths: list, size: int) -> torch.Tensor:
    if not paths:
        return torch.zeros(0, 1, size, size, dtype=torch.bool)
    return torch.stack([load_mask(p, size) for p in paths])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [0, 1]."""
    return images.float() / 255.0


def check_same_size(image: Path, mask: Path) -> None:
    """A mask must have its image's size (a mask of another size marks other pixels)."""
    a, b = header_size(image), header_size(mask)
    if a != b:
        raise DualAnoDiffError(f"mask {mask} is {b[0]}x{b[1]} but its image {image} is {a[0]}x{a[1]}; "
                               "give masks of the same size as their images")
