"""Writing COCO and YOLO exports of a written dataset, new or extended, never half-written.

Each format has its own folder (``<out>/coco``, ``<out>/yolo``) whose ``export.json`` records the export's
settings (validation share, seed, connectivity), its categories and every image it holds (name, split,
digest of the source image and mask). Layouts:

    coco/annotations/instances_train.json, instances_val.json   (file_name relative to images/<split>/)
    coco/images/<split>/<object>/<defect>/<stem>.png
    yolo/data.yaml
    yolo/images/<split>/<object>/<defect>/<stem>.png, yolo/labels/<split>/<object>/<defect>/<stem>.txt

A new export is written into a hidden folder beside its place and renamed into place when complete.
Extending an export adds only what it lacks, each file written whole and renamed into place, in an order
that leaves a readable dataset at every moment: COCO's annotation files (what readers list) after the
images they name; YOLO's ``data.yaml`` with the grown class list before any label uses a new class, each
label before its image. ``export.json`` comes last. An export made with other settings, a folder that is
not an export, or an image of the same name with other pixels is refused before anything is written.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import checks
from ..errors import DualAnoDiffError
from ..io_utils import atomic_write, new_temporary
from . import categories as cats
from . import coco, yolo
from .annotate import Annotated, annotate, digest_of
from .formats import EXPORT_FORMATS
from .regions import CONNECTIVITY
from .split import SPLITS, split_of

STATE = "export.json"
VERSION = 1
DEFAULT_VAL_SHARE = 0.1
FIX_SETTINGS = "export with the settings it was made with (--val-share, --seed), or choose another --output"


@dataclass(frozen=True)
class ExportSettings:
    val_share: float = DEFAULT_VAL_SHARE
    seed: int = 0

    def record(self, fmt: str) -> dict:
        return {"format": fmt, "version": VERSION, "connectivity": CONNECTIVITY, "val_share": self.val_share,
                "seed": self.seed}


def check_settings(settings: ExportSettings, share_what: str = "--val-share") -> ExportSettings:
    if not (isinstance(settings.val_share, (int, float)) and 0 <= settings.val_share < 1):
        raise DualAnoDiffError(f"{share_what} must lie in [0, 1) (the share of images drawn for validation), "
                               f"got {settings.val_share}")
    return settings


def read_state(folder: Path, fmt: str) -> dict | None:
    """The ``export.json`` of an existing export folder, None when the folder does not exist."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise DualAnoDiffError(f"{folder} is a file, so the {fmt} export cannot go there; choose another --output")
    state_file = folder / STATE
    if not state_file.is_file():
        raise DualAnoDiffError(f"{folder} exists and is not a {fmt} export of dualanodiff (no {STATE} in it); "
                               "choose another --output, or move that folder away")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DualAnoDiffError(f"{state_file} cannot be read ({exc}); choose another --output, or move {folder} "
                               "away") from None
    if state.get("format") != fmt:
        raise DualAnoDiffError(f"{folder} holds a {state.get('format')!r} export, not a {fmt} one; choose another "
                               "--output")
    return state


def check_target(out: Path, formats: tuple, settings: ExportSettings) -> dict:
    """Each format's existing export state (None: new), refusing one made with other settings; nothing is
    read but the ``export.json`` files, nothing written."""
    checks.output_dir(out, "--output")
    check_settings(settings)
    states = {}
    for fmt in formats:
        folder = Path(out) / fmt
        state = read_state(folder, fmt)
        if state is not None:
            recorded = {k: state.get(k) for k in ("version", "connectivity", "val_share", "seed")}
            current = {k: v for k, v in settings.record(fmt).items() if k in recorded}
            checks.same_settings(recorded, current, folder, FIX_SETTINGS)
        states[fmt] = state
    return states


def _prepare(samples: list, formats: tuple, states: dict, settings: ExportSettings) -> tuple:
    """Every check that needs the files (digests against the existing exports, masks readable and of their
    image's size), and the annotations of what each format lacks. Returns (per format its new items,
    per format its categories)."""
    conflicts = []
    todo = {fmt: [] for fmt in formats}
    categories = {fmt: cats.extend((states[fmt] or {}).get("categories", []), [s.defect for s in samples])
                  for fmt in formats}
    for sample in samples:
        item = Annotated(sample, digest_of(sample), split_of(sample.name, settings.val_share, settings.seed))
        needed = []
        for fmt in formats:
            known = ((states[fmt] or {}).get("images") or {}).get(sample.name)
            if known is None:
                needed.append(fmt)
            elif known["digest"] != item.digest:
                conflicts.append(f"{Path(sample.image)} (exported as {sample.name} in {fmt}/)")
        if needed and not conflicts:
            ids = {fmt: cats.ids_by_name(categories[fmt])[sample.defect] for fmt in needed}
            annotate(item, tuple(needed), ids[needed[0]])
            if len(set(ids.values())) > 1:  # the formats' category lists differ: one annotation each
                for fmt in needed[1:]:
                    annotate(item, (fmt,), ids[fmt])
            for fmt in needed:
                todo[fmt].append(item)
    if conflicts:
        more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        raise DualAnoDiffError(f"the export already holds images of the same names with other pixels or masks: "
                               f"{'; '.join(conflicts[:5])}{more}. This is another dataset (or regenerated samples): "
                               "export it into another --output")
    return todo, categories


def _image_rel(item: Annotated) -> str:
    return f"{item.sample.name}{item.sample.image.suffix.lower() or '.png'}"


def _json_bytes(data) -> bytes:
    return (json.dumps(data, separators=(",", ":")) + "\n").encode("utf-8")


def _write(path: Path, data: bytes, fresh: bool) -> None:
    if fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), overwrite=True)


def _copy(src: Path, dst: Path, fresh: bool) -> None:
    if fresh:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    else:
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp), overwrite=True)


def _state(fmt: str, settings: ExportSettings, categories: list, images: dict) -> dict:
    return {**settings.record(fmt), "categories": categories, "images": dict(sorted(images.items()))}


def _write_coco(root: Path, items: list, state: dict | None, categories: list, settings: ExportSettings) -> None:
    fresh = state is None
    docs = {split: {"images": [], "annotations": []} for split in SPLITS}
    if not fresh:  # what export.json records; entries of an extension that stopped half way are written anew
        recorded = {v["id"] for v in state["images"].values()}
        for split in SPLITS:
            path = root / "annotations" / f"instances_{split}.json"
            if path.is_file():
                doc = json.loads(path.read_text(encoding="utf-8"))
                docs[split] = {"images": [e for e in doc["images"] if e["id"] in recorded],
                               "annotations": [a for a in doc["annotations"] if a["image_id"] in recorded]}
    everything = [e for d in docs.values() for e in d["images"]]
    next_image = max((e["id"] for e in everything), default=0) + 1
    next_ann = max((a["id"] for d in docs.values() for a in d["annotations"]), default=0) + 1
    images = dict((state or {}).get("images", {}))
    for item in items:
        rel = _image_rel(item)
        _copy(item.sample.image, root / "images" / item.split / rel, fresh)
        docs[item.split]["images"].append(coco.image_entry(next_image, rel, item.width, item.height))
        for ann in item.formats["coco"]:
            docs[item.split]["annotations"].append({"id": next_ann, "image_id": next_image, **ann})
            next_ann += 1
        images[item.sample.name] = {"split": item.split, "digest": item.digest, "file": rel, "id": next_image}
        next_image += 1
    for split in SPLITS:
        doc = coco.document(docs[split]["images"], docs[split]["annotations"], categories)
        _write(root / "annotations" / f"instances_{split}.json", _json_bytes(doc), fresh)
    _write(root / STATE, _json_bytes(_state("coco", settings, categories, images)), fresh)


def _write_yolo(root: Path, final: Path, items: list, state: dict | None, categories: list,
                settings: ExportSettings) -> None:
    fresh = state is None
    images = dict((state or {}).get("images", {}))
    has_val = any(v["split"] == "val" for v in images.values())
    place = str(final.resolve())
    if not fresh:  # the grown class list before any label uses it
        _write(root / "data.yaml", yolo.data_yaml(place, categories, has_val).encode(), fresh)
    for item in items:
        rel = _image_rel(item)
        label = Path("labels", item.split, item.sample.name + ".txt")
        _write(root / label, item.formats["yolo"].encode(), fresh)
        _copy(item.sample.image, root / "images" / item.split / rel, fresh)
        images[item.sample.name] = {"split": item.split, "digest": item.digest, "file": rel}
    has_val = any(v["split"] == "val" for v in images.values())
    _write(root / "data.yaml", yolo.data_yaml(place, categories, has_val).encode(), fresh)
    _write(root / STATE, _json_bytes(_state("yolo", settings, categories, images)), fresh)


def _counts(state: dict) -> dict:
    images = state.get("images", {})
    return {"images": len(images), **{split: sum(v["split"] == split for v in images.values()) for split in SPLITS},
            "categories": len(state.get("categories", []))}


def export(samples: list, out: Path, formats: tuple, settings: ExportSettings = ExportSettings()) -> dict:
    """Export ``samples`` (``source.read_samples``) into ``out/<format>`` for each of ``formats`` (coco, yolo).
    Everything is checked before the first file is written. Returns per format: images in the export,
    per split, categories, and how many were added now."""
    formats = tuple(f for f in EXPORT_FORMATS if f in formats)
    out = Path(out)
    states = check_target(out, formats, settings)
    todo, categories = _prepare(samples, formats, states, settings)
    made_out = not out.exists()
    fresh = {}  # format -> the hidden folder its new export is written into
    try:
        for fmt in formats:
            state, final = states[fmt], out / fmt
            if state is not None and not todo[fmt] and categories[fmt] == state.get("categories"):
                continue  # nothing to add: nothing rewritten
            if state is None:
                out.mkdir(parents=True, exist_ok=True)
                fresh[fmt] = root = Path(new_temporary(final, folder=True))
            else:
                root = final
            if fmt == "coco":
                _write_coco(root, todo[fmt], state, categories[fmt], settings)
            else:
                _write_yolo(root, final, todo[fmt], state, categories[fmt], settings)
        for fmt, root in fresh.items():  # the new exports appear whole, after everything was written
            try:
                os.rename(root, out / fmt)
            except OSError:
                raise DualAnoDiffError(f"{out / fmt} appeared while the export was written; export again") from None
    except BaseException:
        for root in fresh.values():
            shutil.rmtree(root, ignore_errors=True)
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    results = {}
    for fmt in formats:
        state = json.loads((out / fmt / STATE).read_text(encoding="utf-8"))
        results[fmt] = {"new": len(todo[fmt]), **_counts(state)}
    return results


def describe(results: dict, out: Path) -> list:
    """One line per format for the user."""
    return [f"{Path(out) / fmt}: {r['images']} images ({r['train']} train, {r['val']} val), {r['categories']} "
            f"categories; {r['new']} added now" for fmt, r in results.items()]
