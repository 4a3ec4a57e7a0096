"""Writing generated pairs as a dataset under ComfyUI's output folder, never overwriting.

Layouts (``pairs``, ``mvtec`` or both) under ``<output>/<folder>/``, as
``dualanodiff_core/generation/dataset_layout.py`` describes them (the layout ``generate`` writes too).
Numbering continues after the highest index present. Every written sample appends one JSON line
to ``<output>/<folder>/manifest.jsonl``. With an export format (``coco``, ``yolo``) every sample of the
folder's manifest is then exported into ``<output>/<folder>/coco`` / ``yolo`` (``dualanodiff_core/export``):
the first time all of them, later only those the export lacks.
"""
from __future__ import annotations

import io
import json
import os
import time

import torch

from ..dualanodiff_core.checks import folder_name
from ..dualanodiff_core.generation.dataset_layout import LAYOUTS, check_names, mvtec_folders, mvtec_paths, next_index, pair_folders, pair_paths
from ..dualanodiff_core.errors import DualAnoDiffError
from ..dualanodiff_core.export.formats import EXPORT_FORMATS, parse_formats

FORMAT_CHOICES = ("none", "coco", "yolo", "coco+yolo")


def check_name(kind: str, value: str) -> str:
    return folder_name(value.strip(), f"{kind} name")


def check_folder(output_dir: str, folder: str) -> str:
    """``folder`` may have sub-folders, but must stay inside ComfyUI's output folder."""
    parts = [p for p in folder.replace("\\", "/").split("/") if p not in ("", ".")]
    for part in parts:
        check_name("folder", part)
    root = os.path.realpath(output_dir)
    target = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, target]) != root:
        raise DualAnoDiffError(f"folder {folder!r} leads outside ComfyUI's output folder")
    return target


def _png_bytes(array: torch.Tensor) -> bytes:
    from PIL import Image

    data = (array.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_new(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "xb") as f:  # exclusive create: an existing file is never replaced
        f.write(data)


def _write_group(files: dict, index: int, make_paths) -> tuple[int, dict]:
    """Write one sample's files at the first free index from ``index`` on."""
    while True:
        paths = make_paths(index)
        if not any(os.path.exists(p) for p in paths.values()):
            try:
                for role, path in paths.items():
                    _write_new(path, files[role])
                return index, paths
            except FileExistsError:  # another writer took this index meanwhile
                pass
        index += 1


def _as_masks(masks: torch.Tensor, size: tuple) -> torch.Tensor:
    import torch.nn.functional as F

    m = masks.reshape(-1, *masks.shape[-2:]).float()
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[:, None], size=size, mode="nearest")[:, 0]
    return (m > 0.5).float()


def export_formats(value: str) -> tuple:
    """The node's ``format`` choice as export formats (``none``: none)."""
    if value not in FORMAT_CHOICES:
        raise DualAnoDiffError(f"unknown format {value!r}; choose one of {', '.join(FORMAT_CHOICES)}")
    return () if value == "none" else parse_formats(value.split("+"), "format", EXPORT_FORMATS)


def save_dataset(output_dir: str, folder: str, object_name: str, defect_name: str, layout: str,
                 images_global: torch.Tensor, masks: torch.Tensor, images_anomaly: torch.Tensor,
                 export: str = "none") -> tuple:
    """Write every sample of the batch, then the exports ``export`` names; returns one manifest record per
    sample and the exports' summary lines."""
    if layout not in LAYOUTS:
        raise DualAnoDiffError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    formats = export_formats(export)
    obj, defect = check_names(object_name.strip(), defect_name.strip(), layout in ("mvtec", "both"))
    if obj in formats:
        raise DualAnoDiffError(f"object name {obj!r} is the name of the {obj} export's folder; choose another "
                               "object name")
    n = images_global.shape[0]
    if images_anomaly.shape[0] != n or masks.reshape(-1, *masks.shape[-2:]).shape[0] != n:
        raise DualAnoDiffError(
            f"got {n} global images, {images_anomaly.shape[0]} anomaly parts and "
            f"{masks.reshape(-1, *masks.shape[-2:]).shape[0]} masks; they must come in equal numbers"
        )
    root = check_folder(output_dir, folder)
    if formats:
        from ..dualanodiff_core.export.writer import ExportSettings, check_target

        check_target(root, formats, ExportSettings())  # an export made with other settings: refused before writing
    os.makedirs(root, exist_ok=True)
    masks = _as_masks(masks, images_global.shape[1:3])
    next_pairs = next_index(pair_folders(root, obj, defect).values())
    next_mvtec = next_index(mvtec_folders(root, obj, defect).values())

    records = []
    for i in range(n):
        files = {
            "image": _png_bytes(images_global[i, ..., :3]),
            "fg": _png_bytes(images_anomaly[i, ..., :3]),
            "mask": _png_bytes(masks[i]),
        }
        record = {"object": obj, "defect": defect, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "mask_empty": not bool(masks[i].any())}
        if layout in ("pairs", "both"):
            index, paths = _write_group(files, next_pairs, lambda k: pair_paths(root, obj, defect, k))
            next_pairs = index + 1
            record["pairs"] = {"index": index, **{r: os.path.relpath(p, root) for r, p in paths.items()}}
        if layout in ("mvtec", "both"):
            index, paths = _write_group(files, next_mvtec, lambda k: mvtec_paths(root, obj, defect, k))
            next_mvtec = index + 1
            record["mvtec"] = {"index": index, **{r: os.path.relpath(p, root) for r, p in paths.items()}}
        records.append(record)
    with open(os.path.join(root, "manifest.jsonl"), "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    if not formats:
        return records, []
    from pathlib import Path

    from ..dualanodiff_core.export.command import export_written
    from ..dualanodiff_core.export.writer import ExportSettings

    return records, export_written(Path(root), Path(root), formats, ExportSettings())
