"""The samples of a dataset already written, as its manifests list them.

Two manifests are read (``generation/dataset_layout.py`` describes the layouts):

- ``generate``'s, ``<root>/<object>/<defect>/manifest.jsonl`` (or ``manifest.part<i>.jsonl`` of an
  unmerged multi-process run): one line per finished sample, ``files`` naming its ``image`` and ``mask``
  relative to ``<root>`` (``index`` alone in older lines: the pairs layout's ``<i>.png``).
- the Save Dataset node's, ``<root>/manifest.jsonl``: ``object``, ``defect`` and the paths of the
  ``pairs`` and/or ``mvtec`` copy relative to ``<root>`` (the pairs copy is read when both exist).

A sample counts once its manifest line exists. Its name in an export is ``<object>/<defect>/<stem>``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import checks
from ..errors import DualAnoDiffError
from ..generation.dataset_layout import pair_paths

@dataclass(frozen=True)
class Sample:
    object: str
    defect: str
    stem: str
    image: Path
    mask: Path

    @property
    def name(self) -> str:
        return f"{self.object}/{self.defect}/{self.stem}"


def _lines(manifest: Path) -> list:
    entries = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise DualAnoDiffError(f"{manifest}, line {number}: not JSON; repair or remove that line") from None
    return entries


def _generate_sample(entry: dict, manifest: Path) -> Sample:
    leaf = manifest.parent
    root, obj, defect = leaf.parent.parent, leaf.parent.name, leaf.name
    files = entry.get("files") or {}
    if "image" in files and "mask" in files:
        image, mask = root / files["image"], root / files["mask"]
    else:
        paths = pair_paths(root, obj, defect, int(entry["index"]))
        image, mask = paths["image"], paths["mask"]
    return Sample(obj, defect, image.stem, image, mask)


def _node_sample(entry: dict, manifest: Path) -> Sample:
    root = manifest.parent
    copy = entry.get("pairs") or entry.get("mvtec")
    if not copy or "image" not in copy or "mask" not in copy:
        raise DualAnoDiffError(f"{manifest}: a line names neither a pairs nor an mvtec copy of its sample "
                               f"({json.dumps(entry)[:120]}); repair or remove that line")
    image = root / copy["image"]
    return Sample(entry["object"], entry["defect"], image.stem, image, root / copy["mask"])


def samples_of(manifest: Path) -> list:
    out = []
    for entry in _lines(manifest):
        if "object" in entry and "defect" in entry:
            out.append(_node_sample(entry, manifest))
        elif "files" in entry or "index" in entry:
            out.append(_generate_sample(entry, manifest))
        else:
            raise DualAnoDiffError(f"{manifest}: a line is neither generate's nor the Save Dataset node's "
                                   f"({json.dumps(entry)[:120]}); repair or remove that line")
    return out


def find_manifests(folder: Path) -> list:
    """The manifests of ``folder`` and of its folders one and two levels down (``generate``'s
    ``<object>/<defect>/``)."""
    return [p for depth in ("", "*/", "*/*/") for p in sorted(folder.glob(depth + "manifest*.jsonl")) if p.is_file()]


def read_samples(folder: Path, what: str = "dataset folder") -> list:
    """Every finished sample of the dataset at ``folder``, checked: each listed image and mask exists,
    and no two samples take the same name."""
    folder = checks.input_dir(folder, what)
    manifests = find_manifests(folder)
    if not manifests:
        raise DualAnoDiffError(f"{what} {folder} holds no manifest.jsonl (looked in it and two levels down): "
                               "give a dataset written by dualanodiff generate or the Save Dataset node")
    samples, seen, missing = [], {}, []
    for manifest in manifests:
        for s in samples_of(manifest):
            missing += [f"{p} (listed in {manifest})" for p in (s.image, s.mask) if not p.is_file()]
            if s.name in seen and seen[s.name] != s:
                raise DualAnoDiffError(f"two samples are both named {s.name}: {seen[s.name].image} and {s.image}; "
                                       "export the two datasets into different --output folders")
            if s.name not in seen:
                seen[s.name] = s
                samples.append(s)
    if not samples:
        raise DualAnoDiffError(f"{what} {folder}: its manifests ({', '.join(str(m) for m in manifests[:3])}) list no "
                               "finished sample yet; generate some first")
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DualAnoDiffError(f"{len(missing)} files listed as finished samples are missing: "
                               f"{'; '.join(missing[:5])}{more}. Restore them, or remove those samples' lines from "
                               "the manifest, then export again")
    return samples
