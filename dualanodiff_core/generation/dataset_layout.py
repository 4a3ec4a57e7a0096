"""Where a generated dataset's files go: the one description that ``generate`` and the Save Dataset node
write and ``evaluate`` reads.

- ``pairs`` (the reference's generated-data layout): ``<root>/<object>/<defect>/{image,fg,mask}/<i>.png``
  (global image, anomaly part, mask).
- ``mvtec`` (MVTec AD's): ``<root>/<object>/test/<defect>/<iii>.png`` with
  ``<root>/<object>/ground_truth/<defect>/<iii>_mask.png``.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..checks import folder_name
from ..errors import DualAnoDiffError

PAIR_ROLES = ("image", "fg", "mask")
LAYOUTS = ("pairs", "mvtec", "both")
GOOD = "good"  # MVTec's folder of normal images
INDEX = re.compile(r"^(\d+)(?:_mask)?\.png$")


def check_names(obj: str, defect: str, mvtec: bool, object_what: str = "object name",
                defect_what: str = "defect name") -> tuple:
    """Both names as folder names; ``good`` is refused as a defect of the MVTec layout."""
    obj, defect = folder_name(obj, object_what), folder_name(defect, defect_what)
    if mvtec and defect.lower() == GOOD:
        raise DualAnoDiffError(f"{defect_what} 'good' is MVTec's name for normal images; pick the defect's name")
    return obj, defect


def pair_folders(root: Path, obj: str, defect: str) -> dict:
    return {role: Path(root) / obj / defect / role for role in PAIR_ROLES}


def pair_paths(root: Path, obj: str, defect: str, index: int) -> dict:
    return {role: folder / f"{index}.png" for role, folder in pair_folders(root, obj, defect).items()}


def mvtec_folders(root: Path, obj: str, defect: str) -> dict:
    return {"image": Path(root) / obj / "test" / defect, "mask": Path(root) / obj / "ground_truth" / defect}


def mvtec_paths(root: Path, obj: str, defect: str, index: int) -> dict:
    folders = mvtec_folders(root, obj, defect)
    return {"image": folders["image"] / f"{index:03d}.png", "mask": folders["mask"] / f"{index:03d}_mask.png"}


def next_index(folders) -> int:
    """One past the highest sample index found in ``folders`` (0 when there is none)."""
    highest = -1
    for folder in map(Path, folders):
        if folder.is_dir():
            for p in folder.iterdir():
                m = INDEX.match(p.name)
                if m:
                    highest = max(highest, int(m[1]))
    return highest + 1
