"""curves.png (pixel and image ROC and PR curves, one colour per set) and predictions.png (test images,
their ground truth and every set's predicted map), drawn with Pillow (no plotting library needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io_utils import atomic_write
from .images import to_float

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
PANELS = (("pixel_roc", "pixel ROC", "FPR", "TPR"), ("pixel_pr", "pixel PR", "recall", "precision"),
          ("image_roc", "image ROC", "FPR", "TPR"), ("image_pr", "image PR", "recall", "precision"))
# anchor colours of the heat map (black - purple - red - orange - yellow), evenly spaced in [0, 1]
HEAT = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], np.float32)


def _save(image, path: Path) -> Path:
    return atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"), overwrite=True)


def _panel(draw, box, title, xlabel, ylabel, curves: list) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline="black")
    for t in (0.25, 0.5, 0.75):
        gx, gy = x0 + t * (x1 - x0), y1 - t * (y1 - y0)
        draw.line([(gx, y0), (gx, y1)], fill=(225, 225, 225))
        draw.line([(x0, gy), (x1, gy)], fill=(225, 225, 225))
    for t in (0, 0.5, 1):
        draw.text((x0 + t * (x1 - x0) - 6, y1 + 4), f"{t:g}", fill="black")
        draw.text((x0 - 22, y1 - t * (y1 - y0) - 5), f"{t:g}", fill="black")
    draw.text((x0, y0 - 16), f"{title}: {ylabel} against {xlabel}", fill="black")
    draw.text(((x0 + x1) / 2 - 3 * len(xlabel), y1 + 16), xlabel, fill="black")
    for colour, points in curves:
        if not points:
            continue
        xy = [(x0 + px * (x1 - x0), y1 - py * (y1 - y0)) for px, py in points]
        if len(xy) == 1:
            xy = xy * 2
        draw.line(xy, fill=colour, width=2)


def curves_figure(results: dict, path: Path, panel: int = 260) -> Path:
    """2 x 2 panels (pixel ROC, pixel PR, image ROC, image PR) with a legend; first seed of each set."""
    from PIL import Image, ImageDraw

    margin, legend = 48, 18 * len(results) + 12
    width, height = 2 * (panel + 2 * margin), 2 * (panel + 2 * margin) + legend
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    names = list(results)
    for k, (key, title, xl, yl) in enumerate(PANELS):
        col, row = k % 2, k // 2
        x0, y0 = col * (panel + 2 * margin) + margin, row * (panel + 2 * margin) + margin
        curves = [(COLOURS[i % len(COLOURS)], (results[n].get("curves") or {}).get(key, [])) for i, n in enumerate(names)]
        _panel(draw, (x0, y0, x0 + panel, y0 + panel), title, xl, yl, curves)
    top = 2 * (panel + 2 * margin)
    for i, name in enumerate(names):
        y = top + 4 + 18 * i
        draw.line([(margin, y + 7), (margin + 30, y + 7)], fill=COLOURS[i % len(COLOURS)], width=3)
        draw.text((margin + 38, y), name, fill="black")
    return _save(image, path)


def heat(values: torch.Tensor) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 heat map colours."""
    v = values.clamp(0, 1).numpy() * (len(HEAT) - 1)
    lo = np.floor(v).astype(int).clip(0, len(HEAT) - 2)
    t = (v - lo)[..., None]
    return (HEAT[lo] * (1 - t) + HEAT[lo + 1] * t + 0.5).astype(np.uint8)


def predictions_figure(data, indices: list, maps: dict, path: Path, tile: int = 128) -> Path:
    """Rows: test images; columns: image | ground truth | one predicted map per set (first seed)."""
    from PIL import Image, ImageDraw

    names = list(maps)
    cols = 2 + len(names)
    header = 16
    sheet = Image.new("RGB", (cols * (tile + 4), header + max(1, len(indices)) * (tile + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(["image", "ground truth"] + names):
        draw.text((c * (tile + 4) + 2, 2), title[: tile // 6], fill="black")

    def put(array: np.ndarray, c: int, r: int) -> None:
        im = Image.fromarray(array).resize((tile, tile), Image.NEAREST)
        sheet.paste(im, (c * (tile + 4), header + r * (tile + 18)))

    for r, i in enumerate(indices):
        img = (to_float(data.test.images[i]).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        put(img, 0, r)
        put((data.test.masks[i, 0].numpy().astype(np.uint8) * 255), 1, r)
        for c, name in enumerate(names):
            put(heat(maps[name][r]), 2 + c, r)
        label = data.test.names[i] if data.test.names else str(i)
        draw.text((2, header + r * (tile + 18) + tile + 2), label[-(cols * tile // 6):], fill="black")
    return _save(sheet, path)
