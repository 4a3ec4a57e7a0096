"""Reading one written sample and making its annotations: the mask's regions once, shared by every format."""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np

from ..errors import DualAnoDiffError
from . import coco, yolo
from .regions import label_regions
from .source import Sample


@dataclass
class Annotated:
    """A sample as the exports need it: its digest (image and mask bytes), size, split, and per format
    what goes into the export (``coco``: annotations without ids; ``yolo``: the label file's text)."""

    sample: Sample
    digest: str
    split: str
    width: int = 0
    height: int = 0
    formats: dict = field(default_factory=dict)


def digest_of(sample: Sample) -> str:
    """SHA-256 over the image's and the mask's bytes: what an exported image stands for."""
    h = hashlib.sha256()
    for path in (sample.image, sample.mask):
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _open(path, what: str):
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(path.read_bytes()))
        img.load()
        return img
    except OSError as exc:  # PIL's UnidentifiedImageError is one
        raise DualAnoDiffError(f"cannot read the {what} {path} as an image ({exc}); replace it, or remove its "
                               "sample's line from the manifest, then export again") from None


def read_mask(path) -> np.ndarray:
    """The binary mask (True = defect): grey levels of 128 and above."""
    return np.asarray(_open(path, "mask").convert("L")) >= 128


def annotate(item: Annotated, formats: tuple, category_id: int) -> Annotated:
    """Fill in ``item``'s size and its entries for ``formats``."""
    from PIL import Image

    s = item.sample
    try:
        with Image.open(s.image) as img:
            width, height = img.size
    except OSError as exc:
        raise DualAnoDiffError(f"cannot read the image {s.image} ({exc}); replace it, or remove its sample's line "
                               "from the manifest, then export again") from None
    mask = read_mask(s.mask)
    if mask.shape != (height, width):
        raise DualAnoDiffError(f"the mask {s.mask} is {mask.shape[1]}x{mask.shape[0]} but its image {s.image} is "
                               f"{width}x{height}; a mask must have its image's size")
    regions = label_regions(mask)
    item.width, item.height = width, height
    if "coco" in formats:
        item.formats["coco"] = coco.region_annotations(regions, category_id)
    if "yolo" in formats:
        item.formats["yolo"] = yolo.label_text(regions, category_id - 1)
    return item
