"""Speed of the COCO + YOLO export (dualanodiff_core/export) on a written dataset: N pairs (default 1,000)
of S x S pixels (default 256) in generate's pairs layout with its manifest, each mask holding a few defect
regions of the shapes that matter (blobs, one-pixel scratches, rings with holes, regions on the border;
about one mask in ten empty). Times one `export-dataset` of every pair into both formats in this process
(the dataset is written first, outside the timing), then reads the YOLO polygons back:

  centre IoU   the polygons rasterised at pixel centres (even-odd), against the masks: 1.0 is exact
  PIL IoU      the same polygons drawn by PIL's ImageDraw.polygon, which fills every pixel the outline
               touches (as OpenCV's fillPoly does for Ultralytics): what a reader of that kind gets

Prints a table and a JSON line.

    python benchmarks/export.py                      # 1,000 pairs of 256 px, coco and yolo
    python benchmarks/export.py --pairs 200 --size 512 --formats coco
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def defect_mask(rng, size: int) -> np.ndarray:
    """A few regions: ellipse blobs, one-pixel scratches (random walks), rings with a hole, border pieces."""
    m = np.zeros((size, size), bool)
    if rng.random() < 0.1:
        return m
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(1, 5))):
        kind = rng.integers(0, 4)
        cy, cx = rng.integers(0, size, 2)
        if kind == 0:  # blob
            ry, rx = rng.integers(3, size // 8, 2)
            m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        elif kind == 1:  # one-pixel scratch: a walk of 8-connected steps
            steps = rng.integers(-1, 2, (int(rng.integers(size // 8, size // 2)), 2))
            steps[:, 1] = np.where(steps[:, 1] == 0, 1, steps[:, 1])
            path = np.clip(np.cumsum(steps, axis=0) + [cy, cx], 0, size - 1)
            m[path[:, 0], path[:, 1]] = True
        elif kind == 2:  # ring with a hole
            r = rng.integers(4, size // 10)
            d = np.hypot(yy - cy, xx - cx)
            m |= (d <= r) & (d > r / 2)
        else:  # a piece on the image border
            m[:int(rng.integers(1, 6)), cx:cx + int(rng.integers(2, size // 4))] = True
    return m


def write_dataset(root: Path, pairs: int, size: int, seed: int) -> list:
    from PIL import Image

    rng = np.random.default_rng(seed)
    leaf = root / "part" / "defect"
    for role in ("image", "fg", "mask"):
        (leaf / role).mkdir(parents=True, exist_ok=True)
    base = (np.add.outer(np.arange(size), np.arange(size)) % 256).astype(np.uint8)
    masks, lines = [], []
    for i in range(pairs):
        mask = defect_mask(rng, size)
        noise = rng.integers(0, 24, (size, size, 3), dtype=np.uint8)
        image = (base[..., None] // 2 + noise).astype(np.uint8)
        image[mask] = (200, 40, 40)
        Image.fromarray(image).save(leaf / "image" / f"{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(leaf / "mask" / f"{i}.png")
        masks.append(mask)
        lines.append(json.dumps({"index": i, "seed": i, "mask_empty": not mask.any(),
                                 "files": {r: f"part/defect/{r}/{i}.png" for r in ("image", "fg", "mask")}}))
    (leaf / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))
    return masks


def centre_raster(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    inside = np.zeros((h, w), bool)
    for (x1, y1), (x2, y2) in zip(poly, np.roll(poly, -1, axis=0)):
        if y1 != y2:
            inside ^= ((ys > min(y1, y2)) != (ys > max(y1, y2))) & (xs < x1 + (ys - y1) * (x2 - x1) / (y2 - y1))
    return inside


def pil_raster(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("1", (w, h))
    ImageDraw.Draw(img).polygon([tuple(p) for p in poly.tolist()], fill=1)
    return np.asarray(img)


def yolo_ious(folder: Path, masks: list, size: int, limit: int) -> dict:
    """Per image IoU of the union of its polygons with its mask, both rasterisers (images with a defect)."""
    found = {}
    for label in (folder / "labels").rglob("*.txt"):
        found[int(label.stem)] = label
    centre, pil = [], []
    for i in sorted(found)[:limit]:
        if not masks[i].any():
            continue
        a, b = np.zeros((size, size), bool), np.zeros((size, size), bool)
        for line in found[i].read_text().splitlines():
            poly = np.array([float(v) for v in line.split()[1:]]).reshape(-1, 2) * size
            a |= centre_raster(poly, size, size)
            b |= pil_raster(poly, size, size)
        union = masks[i].sum()
        centre.append(float((a & masks[i]).sum() / (a | masks[i]).sum()) if union else 1.0)
        pil.append(float((b & masks[i]).sum() / (b | masks[i]).sum()) if union else 1.0)
    return {"iou_images": len(centre), "centre_iou_min": min(centre), "pil_iou_min": min(pil),
            "pil_iou_mean": float(np.mean(pil))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--formats", default="coco,yolo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iou-images", type=int, default=200, help="images whose polygons are read back (default 200)")
    args = p.parse_args()

    from dualanodiff_core.export.source import read_samples
    from dualanodiff_core.export.writer import export

    formats = tuple(args.formats.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        masks = write_dataset(root, args.pairs, args.size, args.seed)
        written = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = export(read_samples(root), root, formats)
        seconds = time.perf_counter() - t0
        regions = 0
        if "coco" in formats:
            for split in ("train", "val"):
                doc = json.loads((root / "coco" / "annotations" / f"instances_{split}.json").read_text())
                regions += len(doc["annotations"])
        ious = yolo_ious(root / "yolo", masks, args.size, args.iou_images) if "yolo" in formats else {}
    row = {"pairs": args.pairs, "size": args.size, "formats": list(formats), "seconds": round(seconds, 3),
           "ms_per_pair": round(1000 * seconds / args.pairs, 3), "regions": regions,
           "images": {f: r["images"] for f, r in results.items()}, **{k: round(v, 4) if isinstance(v, float) else v
                                                                      for k, v in ious.items()},
           "dataset_written_s": round(written, 1), "cpus": len(os.sched_getaffinity(0)),
           "threads": os.environ.get("OMP_NUM_THREADS", "unset"), "python": platform.python_version(),
           "numpy": np.__version__}
    print(f"{args.pairs} pairs of {args.size} px -> {'+'.join(formats)}: {seconds:.2f} s "
          f"({row['ms_per_pair']:.2f} ms per pair), {regions} COCO annotations")
    if ious:
        print(f"YOLO polygons read back on {ious['iou_images']} images with a defect: IoU at pixel centres min "
              f"{ious['centre_iou_min']:.4f}; drawn by PIL's polygon fill min {ious['pil_iou_min']:.4f}, "
              f"mean {ious['pil_iou_mean']:.4f}")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
