"""``dualanodiff demo --place``: the SAIM model's defects put on normal world images, through
``dualanodiff generate --on-images ... --region auto`` (the user's code path).

Normal objects of the world (their exact object masks given as ``--object-masks``), one region per pair
drawn by ``--region auto`` from the few-shot masks' sizes. Metrics over the placed pairs (input image I,
region R, placed global image P, anomaly image A, mask M, defect colour D(x) = ``world.defect_pixels``):

- ``change_outside_region``: max |P - I| over all pixels outside R, in 0..255 (the target is 0);
- ``anomaly_defect_in_region``: share of the anomaly images' defect-colour pixels D(A), pooled, that lie
  in R: where the anomaly branch draws the defect (held to its canvas outside R, or free);
- ``mask_in_region_kept``: share of the mask cut out of A that survives the cut to R, pooled;
- ``alignment_iou_in_region``: mean IoU(M, D(P) within R) over pairs where either is non-empty (the
  plain demo's ``alignment_iou`` restricted to the region);
- ``nonempty_mask_share`` and ``defect_area_ratio`` as in the plain demo.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import world as demo_world
from ..generation.placement import AUTO_GROW

IMAGES, VARIATIONS = 16, 2
ANOMALY_OUTSIDE = "canvas"  # generate's default --anomaly-outside (scripts/measure_placement.py compares both)
# The plain demo's guidance. With DDIM it was 6 (at 2.5 the anomaly branch drew no defect in a third of
# the small regions); with Euler ancestral, docs/demo.md's sweep at generate's default --region-grow 1
# (seeds 0 and 1) gives alignment IoU in region 0.808 / 0.813 / 0.811 at 2.5 / 4 / 6 with the defect area
# ratio 1.26 / 1.94 / 2.63: the same fit, defects nearest the training size at 2.5
GUIDANCE = 2.5


def write_normal_images(folder: Path, n: int, seed: int) -> dict:
    """``folder/images/<i>.png`` (normal world objects) and ``folder/objects/<i>.png`` (their object
    masks); returns name -> world sample."""
    import shutil

    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    (folder / "objects").mkdir()
    samples = {}
    for i, s in enumerate(demo_world.samples(n, seed=3000 + seed)):
        name = f"{i:03d}.png"
        Image.fromarray((s.image * 255 + 0.5).astype(np.uint8)).save(folder / "images" / name)
        Image.fromarray(s.object_mask.astype(np.uint8) * 255).save(folder / "objects" / name)
        samples[name] = s
    return samples


def read_placed(root: Path, folder: Path, normals: dict) -> dict:
    """The placed pairs in manifest order: input images, regions (the manifest's box cut to the object),
    placed global images, anomaly images (floats in [0, 1]) and masks."""
    from PIL import Image

    entries = sorted((json.loads(line) for line in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
                      if line.strip()), key=lambda e: e["index"])
    out = {k: [] for k in ("input", "region", "image", "fg", "mask")}
    for e in entries:
        with Image.open(folder / "images" / e["source"]) as im:
            out["input"].append(np.asarray(im.convert("RGB")))
        x, y, w, h = (int(v) for v in e["region"].removeprefix("auto ").split(","))
        box = np.zeros(out["input"][-1].shape[:2], bool)
        box[y:y + h, x:x + w] = True
        out["region"].append(box & normals[e["source"]].object_mask)
        for kind, mode in (("image", "RGB"), ("fg", "RGB"), ("mask", "L")):
            with Image.open(root / kind / f"{e['index']}.png") as im:
                out[kind].append(np.asarray(im.convert(mode)))
    arrays = {k: np.stack(v) for k, v in out.items()}
    arrays["mask"] = arrays["mask"] > 127
    for k in ("image", "fg"):
        arrays[k] = arrays[k].astype(np.float32) / 255
    return arrays


def placement_metrics(placed: dict, training_masks) -> dict:
    import torch

    from ..masks.extract import extract_masks
    from .stages import defect_area_ratio

    region, mask = placed["region"], placed["mask"]
    outside = ~region
    change = np.abs(placed["image"] * 255 - placed["input"].astype(np.float32)).max(-1)
    fg_defect = demo_world.defect_pixels(placed["fg"])
    g_defect = demo_world.defect_pixels(placed["image"]) & region
    uncut = extract_masks(torch.from_numpy(placed["fg"]).permute(0, 3, 1, 2), "threshold",
                          threshold=placed["threshold"]).binary[:, 0].numpy() > 0.5
    scored = [demo_world.iou(m, d) for m, d in zip(mask, g_defect) if m.any() or d.any()]

    def share(part, whole):
        return round(float(part.sum() / whole.sum()), 4) if whole.sum() else None

    return {
        "change_outside_region": round(float(change[outside].max()) if outside.any() else 0.0, 4),
        "anomaly_defect_in_region": share(fg_defect & region, fg_defect),
        "mask_in_region_kept": share(uncut & region, uncut),
        "alignment_iou_in_region": round(float(np.mean(scored)), 4) if scored else 0.0,
        "nonempty_mask_share": round(float(np.mean([m.any() for m in mask])), 4),
        "defect_area_ratio": round(defect_area_ratio(placed["image"], training_masks), 4),
        "region_area_share": round(float(region.mean()), 4),
        "pairs": len(mask),
    }


def run_placement(cfg, checkpoint: Path, training_masks_dir: Path, training_masks, out: Path,
                  anomaly_outside: str = ANOMALY_OUTSIDE, name: str = "placed", guidance: float = GUIDANCE,
                  region_grow: float = AUTO_GROW) -> tuple:
    """Generate the placed pairs with ``checkpoint`` into ``out/samples/<name>``; returns (arrays for the
    contact sheet, metrics)."""
    import shutil

    from ..generation.generate import GenerateConfig, generate

    folder = out / "place_inputs"
    normals = write_normal_images(folder, IMAGES, cfg.seed)
    samples_dir = out / "samples" / name
    shutil.rmtree(samples_dir, ignore_errors=True)
    root = generate(GenerateConfig(
        base_model=cfg.base_model, checkpoint=checkpoint, output_dir=samples_dir, object="world", defect=cfg.defect,
        batch_size=cfg.batch_size, scheduler=cfg.scheduler, steps=cfg.sample_steps, guidance=guidance, seed=cfg.seed,
        resolution=demo_world.SIZE, mask_threshold=cfg.mask_threshold, dtype="fp32", cpu=cfg.cpu,
        on_images=folder / "images", region="auto", training_masks=training_masks_dir,
        object_masks=folder / "objects", variations=VARIATIONS, anomaly_outside=anomaly_outside,
        region_grow=region_grow))
    placed = read_placed(root, folder, normals)
    placed["threshold"] = cfg.mask_threshold
    return placed, {**placement_metrics(placed, training_masks), "anomaly_outside": anomaly_outside,
                    "guidance": guidance, "region_grow": region_grow}
