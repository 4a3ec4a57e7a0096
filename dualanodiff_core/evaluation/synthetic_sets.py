"""Synthetic training sets on disk: finding their (image, mask) pairs and checking them.

Layouts read (``DIR`` is what ``--synthetic`` names):

- ``generate`` / Save Dataset ``pairs``: ``<object>/<defect>/{image,mask}/<i>.png`` (``fg/`` is not
  needed). ``DIR`` may be the dataset root (objects below it), one object's folder, or one defect's
  folder. Where a defect folder has ``generate``'s ``manifest.jsonl``, only the samples it lists count
  (a sample whose files were written but not yet recorded is unfinished).
- Save Dataset / ``generate --mvtec-layout`` ``mvtec``: ``<object>/test/<defect>/<iii>.png`` with
  ``<object>/ground_truth/<defect>/<iii>_mask.png``; ``DIR`` may be the object's folder or the root.
  When a folder holds both layouts, the pairs layout is read (the same samples, written twice).

With several objects below ``DIR``, the one named like the evaluated category is taken. Every pair is
checked before anything is trained: a mask for every image, of the image's size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import checks
from ..errors import DualAnoDiffError
from .images import check_same_size, image_files, natural_key

BASELINES = ("real-only", "crop-paste")


@dataclass
class SetSource:
    """A synthetic set as found on disk: pairs per defect type."""

    name: str
    root: Path
    pairs: dict                     # defect -> list of (image Path, mask Path)
    notes: list = field(default_factory=list)
    kind: str = "synthetic"         # or "placed": defects put on real normal images (generate --on-images)

    def count(self) -> int:
        return sum(len(v) for v in self.pairs.values())

    def fingerprint(self) -> dict:
        """What the set is made of, for refusing to resume a detector trained on other data."""
        return {"root": str(self.root.resolve()), "pairs": {d: len(v) for d, v in sorted(self.pairs.items())},
                "files": sorted(f"{d}/{i.name}" for d, v in self.pairs.items() for i, _ in v)[:1000]}


def parse_set_argument(value: str) -> tuple:
    """``NAME=DIR`` or ``DIR`` (name: the folder's name) -> (name, Path)."""
    name, sep, path = value.partition("=")
    if not sep:
        path, name = value, Path(value).resolve().name
    checks.folder_name(name, f"synthetic set name (in --synthetic {value})")
    if name in BASELINES:
        raise DualAnoDiffError(f"--synthetic {value}: {name!r} is the name of a built-in baseline; name the set "
                               "otherwise with NAME=DIR")
    return name, Path(path)


def _subdirs(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _choose(groups: dict, category: str, root: Path, what: str):
    """One group of leaves: the only one, or the one named like the category."""
    if len(groups) == 1:
        return next(iter(groups.values()))
    if category in groups:
        return groups[category]
    names = ", ".join(sorted(groups))
    raise DualAnoDiffError(f"--synthetic {root} holds {what} of several objects ({names}) and none is named "
                           f"{category!r}; give the folder of one of them")


def _manifest_names(leaf: Path) -> set | None:
    """Stems of the image files ``manifest.jsonl`` lists as finished: the names its ``files`` give,
    else each ``index`` (``7`` names ``7.png``, ``0007.png`` ...); None without a manifest."""
    manifest = leaf / "manifest.jsonl"
    if not manifest.is_file():
        return None
    names = set()
    for line in manifest.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise DualAnoDiffError(f"{manifest}: a line is not JSON; repair or remove the file") from None
            if isinstance(entry.get("files"), dict) and "image" in entry["files"]:
                names.add(Path(entry["files"]["image"]).stem)
            elif "index" in entry:
                names.add(str(entry["index"]))
    return names or None


def _listed(image: Path, names: set) -> bool:
    return image.stem in names or (image.stem.isdigit() and str(int(image.stem)) in names)


def _pairs_leaf(leaf: Path) -> list:
    mask_dir = leaf / "mask"
    if not mask_dir.is_dir():
        raise DualAnoDiffError(f"synthetic set folder {leaf} has image/ but no mask/ folder: the detector trains on "
                               "image/mask pairs; give a set written with its masks (generate writes mask/)")
    masks = {p.stem: p for p in image_files(mask_dir)}
    images = sorted(image_files(leaf / "image"), key=natural_key)
    listed = _manifest_names(leaf)
    if listed is not None:
        found = images
        images = [p for p in images if _listed(p, listed)]
        if found and not images:
            expected = sorted(listed, key=natural_key)
            raise DualAnoDiffError(
                f"{leaf / 'manifest.jsonl'} lists samples {', '.join(expected[:5])}{' ...' if len(expected) > 5 else ''}"
                f" but {leaf / 'image'} holds {', '.join(p.name for p in found[:5])}"
                f"{' ...' if len(found) > 5 else ''}: no listed sample has its image there; give the folder the "
                "manifest was written with, or remove the manifest to use every image")
    missing = [str(p) for p in images if p.stem not in masks]
    if missing:
        raise DualAnoDiffError(f"no mask in {mask_dir} for: {', '.join(missing[:5])}"
                               + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                               + " (masks are matched by file name)")
    return [(p, masks[p.stem]) for p in images]


def _mvtec_leaves(obj: Path) -> dict:
    pairs, missing = {}, []
    for defect_dir in _subdirs(obj / "test"):
        if defect_dir.name == "good":
            continue
        gt = obj / "ground_truth" / defect_dir.name
        found = []
        for image in sorted(image_files(defect_dir), key=natural_key):
            mask = gt / f"{image.stem}_mask.png"
            if mask.is_file():
                found.append((image, mask))
            else:
                missing.append(str(mask))
        pairs[defect_dir.name] = found
    if missing:
        raise DualAnoDiffError(f"synthetic set {obj}: missing masks {', '.join(missing[:5])}"
                               + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                               + " (expected ground_truth/<defect>/<name>_mask.png for test/<defect>/<name>.png)")
    return pairs


def find_pairs(root: Path, category: str) -> dict:
    """defect -> [(image, mask)] of the set at ``root`` (see the module docstring for the layouts)."""
    root = checks.input_dir(root, "--synthetic")
    candidates = [root] + [d for c in _subdirs(root) for d in [c] + _subdirs(c)]
    leaves = [d for d in candidates if (d / "image").is_dir() and d.name not in ("test", "ground_truth")]
    if leaves:
        groups = {}
        for leaf in leaves:
            groups.setdefault(leaf.parent.name if leaf != root else root.parent.name, []).append(leaf)
        chosen = _choose(groups, category, root, "image/mask pairs")
        return {leaf.name: _pairs_leaf(leaf) for leaf in chosen}
    objects = [d for d in [root] + _subdirs(root) if (d / "test").is_dir() and (d / "ground_truth").is_dir()]
    if objects:
        return _mvtec_leaves(_choose({d.name: d for d in objects}, category, root, "MVTec-layout sets"))
    bare = [d for d in candidates if (d / "test").is_dir() or (d / "fg").is_dir()]
    hint = f" ({bare[0]} has no masks next to its images)" if bare else ""
    raise DualAnoDiffError(f"--synthetic {root}: no image/mask pairs found{hint}; expected <defect>/image/ with "
                           "<defect>/mask/ (as generate writes) or test/<defect>/ with ground_truth/<defect>/")


def placed_by_generate(pairs: dict) -> bool:
    """Whether ``generate --on-images`` wrote these pairs (its manifest records the images it placed on)."""
    for items in pairs.values():
        manifest = items[0][0].parent.parent / "manifest.jsonl" if items else None
        if manifest is not None and manifest.is_file():
            first = manifest.read_text(encoding="utf-8").split("\n", 1)[0]
            try:
                return "on_images" in json.loads(first)
            except json.JSONDecodeError:
                return False
    return False


def load_source(name: str, root: Path, category: str, defects: list | None, placed: bool = False) -> SetSource:
    """Find and check a set; ``defects``: keep only these types (None: keep every type, as one);
    ``placed``: defects placed on real normal images (also recognised from generate's manifest)."""
    found = find_pairs(root, category)
    notes = []
    if defects is not None:
        extra = sorted(set(found) - set(defects))
        if extra:
            notes.append(f"defect types not evaluated, left out: {', '.join(extra)}")
        absent = [d for d in defects if d not in found or not found[d]]
        if absent:
            notes.append(f"no pairs of: {', '.join(absent)}")
        found = {d: v for d, v in found.items() if d in defects}
    pairs = {d: v for d, v in found.items() if v}
    if not pairs:
        wanted = f" of the evaluated defect types ({', '.join(defects)})" if defects else ""
        raise DualAnoDiffError(f"synthetic set {name} ({root}) holds no image/mask pairs{wanted}; "
                               "generate some first or point --synthetic at the right folder")
    for items in pairs.values():
        for image, mask in items:
            check_same_size(image, mask)
    return SetSource(name, Path(root), pairs, notes, "placed" if placed or placed_by_generate(pairs) else "synthetic")
