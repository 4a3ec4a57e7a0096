"""Few-shot training data: (defect image, defect mask) pairs from MVTec AD or from two folders.

Targets follow the reference: global = the image in [-1, 1]; anomaly = image * binary mask, so the
anomaly image's background is 0 in [-1, 1] space (mid-grey). Flips are shared by image, mask and
background.

Resampling to the training resolution (``RESAMPLING``): ``bilinear``, the reference's (image and mask
bilinear, the mask then kept where it is >= 0.5), or ``bicubic`` (image bicubic, mask nearest).
Flips per category (``FLIP_RULES``): ``reference`` flips every category horizontally and vertically
except ``cable``, whose wire colour order is part of "normal"; ``orientation`` also leaves ``metal_nut``
(a mirrored nut *is* its ``flip`` defect) and ``transistor`` (an upside-down part looks ``misplaced``)
unflipped; ``hv`` flips everything; ``none`` nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DualAnoDiffError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SPLITS = ("floor", "reference")
RESAMPLING = ("bilinear", "bicubic")
# (horizontal, vertical) flips by category; categories not listed flip both ways
FLIP_RULES = {
    "reference": {"cable": (False, False)},
    "orientation": {"cable": (False, False), "metal_nut": (False, False), "transistor": (False, False)},
    "hv": {},
    "none": None,
}


def flips_for(rule: str, category: str | None) -> tuple:
    """(horizontal, vertical) flips allowed for ``category`` (None: folder data, no category) under ``rule``."""
    if rule not in FLIP_RULES:
        raise DualAnoDiffError(f"unknown flip rule {rule!r}; choose one of {', '.join(FLIP_RULES)}")
    table = FLIP_RULES[rule]
    return (False, False) if table is None else table.get(category or "", (True, True))


class DataError(DualAnoDiffError):
    """Training data that cannot be used; the message lists the offending files."""


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


def _images(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def few_shot_count(total: int, split: str | int) -> int:
    """How many images train: ``floor`` = L // 3 (disjoint from the evaluation split), ``reference`` =
    the paper code's rounding (``n = L // 3; n += 1 if n % 3``, which overlaps evaluation), or a number."""
    if isinstance(split, int) or str(split).isdigit():
        return min(int(split), total)
    if split == "floor":
        return total // 3
    if split == "reference":
        n = total // 3
        return n + 1 if n % 3 else n
    raise DataError(f"unknown split {split!r}: use 'floor', 'reference' or a number of shots")


def mvtec_pairs(category: Path, defect: str, split: str | int = "floor") -> list:
    """The first few sorted ``test/<defect>`` images of an MVTec AD category with their masks."""
    category = Path(category)
    test_dir = category / "test"
    if not test_dir.is_dir():
        raise DataError(f"{category} is not an MVTec AD category folder (no 'test' subfolder)")
    defects = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name != "good")
    if defect not in defects:
        raise DataError(f"{category}: no defect type {defect!r}; available: {', '.join(defects) or 'none'}")
    images = _images(test_dir / defect)
    chosen = images[: few_shot_count(len(images), split)]
    gt = category / "ground_truth" / defect
    return [Pair(p, gt / f"{p.stem}_mask.png") for p in chosen]


def folder_pairs(images: Path, masks: Path) -> list:
    """Images matched to masks by name (``x.png`` <-> ``x.png`` or ``x_mask.png``, any image suffix)."""
    images, masks = Path(images), Path(masks)
    for folder in (images, masks):
        if not folder.is_dir():
            raise DataError(f"not a folder: {folder}")
    by_stem = {}
    for m in _images(masks):
        by_stem.setdefault(m.stem.removesuffix("_mask"), m)
    pairs, unmatched = [], []
    for img in _images(images):
        mask = by_stem.get(img.stem)
        if mask is None:
            unmatched.append(str(img))
        else:
            pairs.append(Pair(img, mask))
    if unmatched:
        raise DataError(f"no mask in {masks} for: {', '.join(unmatched)} (masks are matched by file name, "
                        "optionally with a _mask suffix)")
    return pairs


def _filters(resample: str):
    from PIL import Image

    if resample not in RESAMPLING:
        raise DualAnoDiffError(f"unknown resampling {resample!r}; choose one of {', '.join(RESAMPLING)}")
    return (Image.BILINEAR, Image.BILINEAR) if resample == "bilinear" else (Image.BICUBIC, Image.NEAREST)


def _rgb_at(im, size: int, resample: str = "bilinear") -> np.ndarray:
    """A PIL image as float RGB in [0, 1] at ``size`` (resized to cover, centre-cropped)."""
    return np.asarray(_resize_crop(im.convert("RGB"), size, _filters(resample)[0]), dtype=np.float32) / 255.0


def _mask_at(im, size: int, resample: str = "bilinear") -> np.ndarray:
    """A PIL mask as 0/1 at ``size``: kept where the resampled mask is >= 0.5 (128 of 255)."""
    return (np.asarray(_resize_crop(im.convert("L"), size, _filters(resample)[1])) > 127).astype(np.float32)


def _load_rgb(path: Path, size: int, resample: str = "bilinear") -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return _rgb_at(im, size, resample)


def _load_mask(path: Path, size: int, resample: str = "bilinear") -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return _mask_at(im, size, resample)


def _resize_crop(im, size: int, resample):
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
    left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
    return im.crop((left, top, left + size, top + size))


def _read_or_report(path: Path, what: str, read, problems: list):
    """``read(opened PIL image)``, or None with the reason appended to ``problems``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return read(im)
    except FileNotFoundError:
        problems.append(f"{path}: {what} missing")
    except Exception as exc:
        problems.append(f"{path}: unreadable ({exc})")
    return None


def _decoded_size(im) -> tuple:
    im.load()  # decodes the pixels, so a truncated file fails here and not mid-training
    return im.size


def check_pairs(pairs: list) -> None:
    """Every pair readable, mask non-empty, same size as its image; lists all offenders at once."""
    if not pairs:
        raise DataError("no training pairs found: give at least one defect image with its mask")
    problems = []
    for pair in pairs:
        image_size = _read_or_report(pair.image, "image", _decoded_size, problems)
        if image_size is None:
            continue
        mask = _read_or_report(pair.mask, "mask", lambda im: np.asarray(im.convert("L")), problems)
        if mask is None:
            continue
        if mask.shape[::-1] != image_size:
            problems.append(f"{pair.mask}: size {mask.shape[1]}x{mask.shape[0]} differs from image {image_size[0]}x{image_size[1]}")
        elif not (mask > 127).any():
            problems.append(f"{pair.mask}: empty mask (no defect pixels)")
    if problems:
        raise DataError("unusable training data:\n  " + "\n  ".join(problems))


def check_image_pairs(images: list, masks: list, names: list) -> None:
    """:func:`check_pairs` for pairs in memory (PIL images): a mask per image, of its size, not empty."""
    if not images:
        raise DataError("no training pairs: give at least one defect image with its mask")
    if len(masks) != len(images):
        raise DataError(f"{len(images)} images but {len(masks)} masks: give one mask per image")
    problems = []
    for name, im, m in zip(names, images, masks):
        if m.size != im.size:
            problems.append(f"{name}: mask {m.size[0]}x{m.size[1]} differs from image {im.size[0]}x{im.size[1]}")
        elif not (np.asarray(m.convert("L")) > 127).any():
            problems.append(f"{name}: empty mask (no defect pixels); paint the defect in the mask")
    if problems:
        raise DataError("unusable training data:\n  " + "\n  ".join(problems))


class PairTensors:
    """All training pairs in memory at one resolution: images in [-1, 1], masks in {0, 1},
    optional backgrounds (object removed) in [-1, 1]. Few-shot data is small."""

    def __init__(self, pairs: list, resolution: int, object_masks: list | None = None, resample: str = "bilinear"):
        check_pairs(pairs)
        self._fill(pairs, [_load_rgb(p.image, resolution, resample) for p in pairs],
                   [_load_mask(p.mask, resolution, resample) for p in pairs], resolution, object_masks)

    @classmethod
    def from_images(cls, images: list, masks: list, names: list, resolution: int, resample: str = "bilinear",
                    object_masks: list | None = None) -> "PairTensors":
        """Pairs given as PIL images (e.g. from ComfyUI's IMAGE and MASK), resized exactly as files are;
        ``names`` stand in for the files in messages and provenance."""
        check_image_pairs(images, masks, names)
        pairs = [Pair(Path(n), Path(n)) for n in names]
        obj = cls.__new__(cls)
        obj._fill(pairs, [_rgb_at(im, resolution, resample) for im in images],
                  [_mask_at(m, resolution, resample) for m in masks], resolution, object_masks)
        return obj

    def _fill(self, pairs: list, images: list, masks: list, resolution: int, object_masks: list | None) -> None:
        self.pairs = pairs
        self.images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1
        self.masks = torch.from_numpy(np.stack(masks)).unsqueeze(1)
        self.backgrounds = None
        if object_masks is not None:
            obj = torch.stack([torch.as_tensor(m, dtype=torch.float32).reshape(1, resolution, resolution) for m in object_masks])
            # the object becomes black (-1 in [-1, 1]); the hole carries the object's shape
            self.backgrounds = self.images * (1 - obj) - obj

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor) -> dict:
        """Images, anomaly targets and backgrounds of ``indices`` with per-sample shared flips."""
        images, masks = self.images[indices].clone(), self.masks[indices].clone()
        backgrounds = None if self.backgrounds is None else self.backgrounds[indices].clone()
        for tensors in (images, masks, backgrounds):
            if tensors is None:
                continue
            tensors[hflip] = tensors[hflip].flip(-1)
            tensors[vflip] = tensors[vflip].flip(-2)
        return {"image": images, "mask": masks, "anomaly": images * masks, "background": backgrounds}


def load_object_masks(pairs: list, folder: Path, resolution: int) -> list:
    """Object masks for BCM backgrounds, matched to the training images by name."""
    masks, missing = [], []
    for pair in pairs:
        candidates = [Path(folder) / f"{pair.image.stem}{s}" for s in (".png", "_mask.png")]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            missing.append(str(candidates[0]))
        else:
            masks.append(_load_mask(path, resolution))
    if missing:
        raise DataError(f"no object mask for: {', '.join(missing)}")
    return masks
