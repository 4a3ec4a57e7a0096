"""The evaluation split: which real images train the generator (the few shots) and which test the detector.

MVTec AD layout, per defect type: ``test/<defect>`` sorted by name, the first ``few_shot_count(n,
split)`` images (``floor``: n // 3, as ``dualanodiff train --split floor``) are the shots, the rest are
test images; all of ``test/good`` is test data too, and ``train/good`` holds the normal training
images. Whatever the split, the test set is what remains after the shots, so the two never overlap
(the reference trains on a rounded-up third but evaluates on everything after n // 3, which overlaps).

Folder layout: ``--images/--masks`` are the test set (an image without a mask is normal), ``--normal``
the normal training images and ``--shot-images/--shot-masks`` the few real defects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..training.data import few_shot_count
from ..errors import DualAnoDiffError
from .images import check_same_size, image_files

GOOD = "good"


@dataclass(frozen=True)
class Item:
    """One real image with its mask (None: a normal image) and its defect type (``good`` if normal)."""

    image: Path
    mask: Path | None
    defect: str

    @property
    def name(self) -> str:
        return f"{self.defect}/{self.image.stem}"


@dataclass
class Category:
    name: str
    defects: list            # defect types evaluated
    test: list               # Items: the test set
    shots: list              # Items: the few real defects (generation training data, never tested on)
    normals: list            # Paths: normal training images
    notes: list = field(default_factory=list)

    def check_disjoint(self) -> None:
        leaked = {s.image.resolve() for s in self.shots} & {t.image.resolve() for t in self.test}
        if leaked:
            raise DualAnoDiffError(f"few-shot images in the test set: {', '.join(sorted(map(str, leaked)))}")


def parse_split(value: str) -> str | int:
    value = str(value)
    if value in ("floor", "reference"):
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise DualAnoDiffError(f"--split {value!r}: use 'floor', 'reference' or a number of shots (at least 1)")


def _mask_of(gt: Path, image: Path) -> Path:
    return gt / f"{image.stem}_mask.png"


def mvtec_category(root: Path, defects: list | None = None, split: str | int = "floor") -> Category:
    """The split of an MVTec AD category folder (``test/``, ``ground_truth/``, ``train/good``)."""
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DualAnoDiffError(f"--mvtec {root} is not an MVTec AD category folder (no test/ subfolder)")
    available = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name != GOOD)
    if not available:
        raise DualAnoDiffError(f"--mvtec {root}: test/ holds no defect type folder")
    chosen = list(defects) if defects else available
    unknown = [d for d in chosen if d not in available]
    if unknown:
        raise DualAnoDiffError(f"--defects {', '.join(unknown)}: not in {test_dir}; available: {', '.join(available)}")
    test, shots, notes, missing = [], [], [], []
    for defect in chosen:
        files = image_files(test_dir / defect)
        k = few_shot_count(len(files), split)
        if len(files) - k < 1:
            raise DualAnoDiffError(f"{test_dir / defect} has {len(files)} images: after {k} few-shot images none "
                                   "is left to test on; add images or choose a smaller --split")
        gt = root / "ground_truth" / defect
        for i, image in enumerate(files):
            mask = _mask_of(gt, image)
            if not mask.is_file():
                missing.append(str(mask))
                continue
            (shots if i < k else test).append(Item(image, mask, defect))
        if k == 0:
            notes.append(f"{defect}: no few-shot image at --split {split} (baselines get none of this type)")
    if missing:
        raise DualAnoDiffError(f"missing ground-truth masks (expected <image name>_mask.png): {', '.join(missing[:5])}"
                               + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    good_dir = test_dir / GOOD
    goods = image_files(good_dir) if good_dir.is_dir() else []
    if not goods:
        notes.append(f"{good_dir}: no normal test images, so image-level metrics need defect-free images elsewhere")
    test += [Item(p, None, GOOD) for p in goods]
    normal_dir = root / "train" / GOOD
    normals = image_files(normal_dir) if normal_dir.is_dir() else []
    if not normals:
        raise DualAnoDiffError(f"{normal_dir}: no normal training images (the detector trains on normal and defective "
                               "images half and half)")
    category = Category(root.name, chosen, test, shots, normals, notes)
    category.check_disjoint()
    for item in category.test + category.shots:
        if item.mask is not None:
            check_same_size(item.image, item.mask)
    return category


def _matched(images: Path, masks: Path | None) -> list:
    """(image, mask or None) by name: ``x.png`` with ``x.png`` or ``x_mask.png``."""
    by_stem = {}
    if masks is not None:
        for m in image_files(masks):
            by_stem.setdefault(m.stem.removesuffix("_mask"), m)
    return [(p, by_stem.get(p.stem)) for p in image_files(images)]


def folder_category(images: Path, masks: Path, normal: Path, shot_images: Path | None = None,
                    shot_masks: Path | None = None, name: str | None = None) -> Category:
    """A test set from two folders (an image without a mask is normal), normals, optional real shots."""
    defect = "defect"
    test = [Item(i, m, defect if m is not None else GOOD) for i, m in _matched(images, masks)]
    if not test:
        raise DualAnoDiffError(f"--images {images} holds no images")
    if not any(t.mask is not None for t in test):
        raise DualAnoDiffError(f"no image in --images {images} has a mask in --masks {masks} (matched by name: x.png "
                               "with x.png or x_mask.png); the test set needs defective images")
    shots = []
    if shot_images is not None:
        pairs = _matched(shot_images, shot_masks)
        unmatched = [str(i) for i, m in pairs if m is None]
        if unmatched:
            raise DualAnoDiffError(f"no mask in --shot-masks {shot_masks} for: {', '.join(unmatched[:5])}")
        if not pairs:
            raise DualAnoDiffError(f"--shot-images {shot_images} holds no images")
        shots = [Item(i, m, defect) for i, m in pairs]
    normals = image_files(normal)
    if not normals:
        raise DualAnoDiffError(f"--normal {normal} holds no images")
    notes = [] if shots else ["no --shot-images: the real-only and crop-and-paste baselines need them"]
    category = Category(name or Path(images).name, [defect], test, shots, normals, notes)
    category.check_disjoint()
    for item in category.test + category.shots:
        if item.mask is not None:
            check_same_size(item.image, item.mask)
    return category
