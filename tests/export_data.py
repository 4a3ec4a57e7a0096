"""Defect masks of the shapes that trip up dataset converters, small datasets written from them, and the
tests' own readers of the exported formats (a polygon rasteriser and a YOLO label parser), independent of
``dualanodiff_core.export``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def shaped_masks(size: int = 32) -> dict:  # size >= 32
    """name -> bool mask (size x size): thin scratches, holes, several regions, regions on the border,
    an empty and a full mask."""
    s = size
    m = {name: np.zeros((s, s), bool) for name in ("scratch", "diagonal", "hole", "several", "border", "empty",
                                                   "pinch")}
    m["scratch"][s // 2, 3:s - 3] = True                       # one pixel high
    m["scratch"][4:s - 4, 5] = True                            # and one pixel wide, crossing it
    for i in range(s - 8):                                     # one-pixel diagonal: 8-connected only
        m["diagonal"][4 + i, 2 + i] = True
        m["diagonal"][4 + i, min(s - 1, 14 + (i * 2) // 3)] = True  # a steeper one beside it
    m["hole"][4:s - 4, 4:s - 4] = True
    m["hole"][8:s - 8, 8:s - 8] = False                        # a hole ...
    m["hole"][s // 2 - 1:s // 2 + 1, s // 2 - 1:s // 2 + 1] = True  # ... with an island in it
    m["hole"][6, 6] = False                                    # a one-pixel hole
    m["hole"][6, 10:13] = False                                # and a thin one
    m["several"][2:6, 2:9] = True
    m["several"][20:27, 3:5] = True
    m["several"][10, 12:30] = True
    m["several"][14:29, 18:29] = True
    m["several"][18:25, 22:25] = False                         # a blob with a hole
    m["border"][0, :] = True                                   # the top row
    m["border"][:, s - 1] = True                               # the right column
    m["border"][s - 3:, 0:4] = True                            # the bottom-left corner
    m["pinch"][8:16, 8:16] = True                              # two squares touching at a corner
    m["pinch"][16:24, 16:24] = True
    m["pinch"][10:14, 10:14] = False                           # a hole in one of them
    m["pinch"][24:27, 4:7] = True                              # a ring of 8 pixels whose hole touches the
    m["pinch"][25, 5] = False                                  # outside at a corner point
    m["pinch"][26, 6] = False
    m["full"] = np.ones((s, s), bool)
    return m


def write_pairs_dataset(root: Path, obj: str, defect: str, masks: list, seed: int = 0) -> Path:
    """A dataset as ``generate`` writes it: ``root/<obj>/<defect>/{image,fg,mask}/<i>.png`` and its
    ``manifest.jsonl``."""
    rng = np.random.default_rng(seed)
    leaf = root / obj / defect
    for role in ("image", "fg", "mask"):
        (leaf / role).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, mask in enumerate(masks):
        image = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
        Image.fromarray(image).save(leaf / "image" / f"{i}.png")
        Image.fromarray(image // 2).save(leaf / "fg" / f"{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(leaf / "mask" / f"{i}.png")
        lines.append(json.dumps({"index": i, "seed": i, "mask_empty": not mask.any(),
                                 "files": {r: f"{obj}/{defect}/{r}/{i}.png" for r in ("image", "fg", "mask")}}))
    with (leaf / "manifest.jsonl").open("a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return leaf


def rasterise(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies inside ``polygon`` ((N, 2) x, y in pixels), by the even-odd rule: a ray
    from each centre to the right crosses the outline an odd number of times."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside = np.zeros((height, width), bool)
    for (x1, y1), (x2, y2) in zip(polygon, np.roll(polygon, -1, axis=0)):
        if y1 == y2:
            continue
        crosses = (ys > min(y1, y2)) != (ys > max(y1, y2))
        x_at = x1 + (ys - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (xs < x_at)
    return inside


def read_yolo_labels(path: Path, height: int, width: int) -> list:
    """[(class index, mask)] of a YOLO segmentation label file, each polygon rasterised."""
    out = []
    for line in path.read_text().splitlines():
        values = line.split()
        coords = np.array([float(v) for v in values[1:]]).reshape(-1, 2) * [width, height]
        out.append((int(values[0]), rasterise(coords, height, width)))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def tree(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (for 'nothing changed' checks)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
