"""Writing images: tensors to PNG (atomically) and side-by-side grids."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .io_utils import atomic_write


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, H, W) or (H, W) in [0, 1] -> HxWx3 / HxW uint8."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.ndim == 3:
        image = image.permute(1, 2, 0)
        if image.shape[-1] == 1:
            image = image[..., 0]
    return (image.numpy() * 255 + 0.5).astype(np.uint8)


def save_png(image: torch.Tensor, path: Path, overwrite: bool = False) -> Path:
    """Write a PNG atomically; refuses to replace a file unless asked."""
    from PIL import Image

    return atomic_write(path, lambda tmp: Image.fromarray(to_uint8(image)).save(tmp, format="PNG"), overwrite)


def save_array_png(image: np.ndarray, path: Path, overwrite: bool = False) -> Path:
    """Write a uint8 HxW or HxWx3 array as PNG atomically, bit for bit."""
    from PIL import Image

    return atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"), overwrite)


def grid(rows: list) -> torch.Tensor:
    """Rows of (3, H, W) images in [0, 1] (masks may be (1, H, W)) -> one (3, H*rows, W*cols) image."""
    def rgb(t):
        return t.expand(3, *t.shape[-2:]) if t.shape[0] == 1 else t

    return torch.cat([torch.cat([rgb(t.float().cpu()) for t in row], dim=-1) for row in rows], dim=-2)
