"""Small datasets the tests write: an MVTec-AD-shaped category with known defect masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_mvtec_category(root: Path, defect: str = "scratch", n: int = 6, size: int = 64, seed: int = 0) -> Path:
    """``root/test/<defect>/000.png`` + ``root/ground_truth/<defect>/000_mask.png`` (+ test/good)."""
    rng = np.random.default_rng(seed)
    for sub in (f"test/{defect}", f"ground_truth/{defect}", "test/good", "train/good"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((size, size, 3), 60, np.uint8)
        img[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = (180, 150, 90)  # the object
        img = np.clip(img + rng.integers(-8, 8, img.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        r = int(rng.integers(size // 3, 2 * size // 3))
        mask[r: r + 3, size // 4 + 2: 3 * size // 4 - 2] = 255  # a horizontal scratch
        img[mask > 0] = (20, 20, 200)
        Image.fromarray(img).save(root / "test" / defect / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth" / defect / f"{i:03d}_mask.png")
        Image.fromarray(img).save(root / "test" / "good" / f"{i:03d}.png")
        good = np.where(mask[..., None] > 0, (180, 150, 90), img).astype(np.uint8)
        Image.fromarray(good).save(root / "train" / "good" / f"{i:03d}.png")
    return root


def write_object_masks(folder: Path, names: list, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    obj = np.zeros((size, size), np.uint8)
    obj[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    for name in names:
        Image.fromarray(obj).save(folder / f"{name}.png")
    return folder


def write_defect_folder(root: Path, n: int = 2, seed: int = 8) -> Path:
    """``root/images/<i>.png`` and ``root/masks/<i>.png``: 64 px textured squares, each with a bright bar
    and its mask, as a user's own defect photos (the Training Pairs node's images/ + masks/ folder)."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(40, 90, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[20 + 10 * i:24 + 10 * i, 8:56] = 255
        image[mask > 0] = (230, 60, 200)
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root
