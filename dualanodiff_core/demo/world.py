"""A procedural few-shot defect world for the demo: textured objects on a background, with or without
a defect, each defect with its exact mask.

Objects are discs, rounded squares, hexagons or ellipses, striped, checkered or speckled, in warm to
blue hues; the background is a dark slate grey with a soft gradient. Defects (``scratch``, ``crack``,
``spot``) are painted in a magenta that neither objects nor background ever use, so defect pixels can
be found again by colour alone in any image, generated ones included (:func:`defect_pixels`).
Everything is numpy, seeded: ``sample(rng)`` is a pure function of the generator's state.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

SIZE = 64
SHAPES = ("disc", "square", "hexagon", "ellipse")
TEXTURES = ("stripes", "checker", "speckle")
HUES = (0.03, 0.09, 0.14, 0.28, 0.42, 0.55, 0.62)  # red-orange .. blue; never purple/magenta
DEFECTS = ("scratch", "crack", "spot")
DEFECT_RGB = np.array([0.93, 0.10, 0.82], np.float32)
# magenta-ness = min(R, B) - G: about 0.72 on a defect, below 0.1 on every object and background pixel
MAGENTA_THRESHOLD = 0.3


@dataclass
class Sample:
    image: np.ndarray   # (H, W, 3) float32 in [0, 1]
    mask: np.ndarray    # (H, W) bool, the defect pixels (empty for normal samples)
    object_mask: np.ndarray  # (H, W) bool
    shape: str
    defect: str | None


def _grid(size: int):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x + 0.5, y + 0.5


def _background(rng, size: int) -> np.ndarray:
    x, y = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((x - size / 2) * np.cos(angle) + (y - size / 2) * np.sin(angle)) / size
    level = rng.uniform(0.22, 0.34) + 0.08 * ramp
    tint = np.array([0.95, 1.0, 1.08], np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    grain = rng.normal(0, 0.012, (size, size, 1))
    return np.clip(level[..., None] * tint + grain, 0, 1).astype(np.float32)


def _shape_mask(rng, shape: str, size: int):
    x, y = _grid(size)
    cx, cy = size / 2 + rng.uniform(-4, 4, 2)
    r = rng.uniform(0.25, 0.33) * size
    rot = rng.uniform(0, np.pi)
    u = (x - cx) * np.cos(rot) + (y - cy) * np.sin(rot)
    v = -(x - cx) * np.sin(rot) + (y - cy) * np.cos(rot)
    if shape == "disc":
        inside = u ** 2 + v ** 2 <= r ** 2
    elif shape == "square":
        s, corner = 0.85 * r, 0.3 * r
        du, dv = np.maximum(np.abs(u) - (s - corner), 0), np.maximum(np.abs(v) - (s - corner), 0)
        inside = du ** 2 + dv ** 2 <= corner ** 2
    elif shape == "hexagon":
        ang = np.arctan2(v, u)
        sector = (ang + np.pi / 6) % (np.pi / 3) - np.pi / 6
        inside = np.hypot(u, v) * np.cos(sector) <= r * np.cos(np.pi / 6)
    else:
        inside = (u / r) ** 2 + (v / (0.65 * r)) ** 2 <= 1
    return inside, (cx, cy, r), (u, v)


def _texture(rng, kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness modulation around 1."""
    if kind == "stripes":
        period = rng.uniform(5, 9)
        return 1 + 0.16 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    if kind == "checker":
        cell = rng.uniform(5, 8)
        return 1 + 0.14 * np.where((np.floor(u / cell) + np.floor(v / cell)) % 2 == 0, 1.0, -1.0)
    return 1 + rng.normal(0, 0.09, u.shape)


def _object_colour(rng) -> np.ndarray:
    hue = HUES[rng.integers(len(HUES))] + rng.uniform(-0.015, 0.015)
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.45, 0.7), rng.uniform(0.62, 0.85))
    return np.array(rgb, np.float32)


def _thick_polyline(points: np.ndarray, width: float, size: int) -> np.ndarray:
    """Pixels within ``width / 2`` of a polyline (N, 2) of (x, y) points."""
    x, y = _grid(size)
    out = np.zeros((size, size), bool)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        out |= np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)) <= width / 2
    return out


def _defect_mask(rng, kind: str, geometry, size: int) -> np.ndarray:
    cx, cy, r = geometry
    if kind == "spot":
        x, y = _grid(size)
        px, py = np.array([cx, cy]) + rng.uniform(-0.5, 0.5, 2) * r
        a, b = rng.uniform(2.5, 4.5), rng.uniform(2.5, 4.5)
        th = rng.uniform(0, np.pi)
        u = (x - px) * np.cos(th) + (y - py) * np.sin(th)
        v = -(x - px) * np.sin(th) + (y - py) * np.cos(th)
        return (u / a) ** 2 + (v / b) ** 2 <= 1
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.9, 1.4) * r
    mid = np.array([cx, cy]) + rng.uniform(-0.35, 0.35, 2) * r
    direction = np.array([np.cos(angle), np.sin(angle)])
    if kind == "scratch":
        pts = np.stack([mid - direction * length / 2, mid + direction * length / 2])
        return _thick_polyline(pts, rng.uniform(2.0, 3.0), size)
    # crack: a jagged walk along the main direction
    n = 6
    t = np.linspace(-0.5, 0.5, n)[:, None] * length
    normal = np.array([-direction[1], direction[0]])
    jitter = rng.uniform(-2.5, 2.5, (n, 1))
    pts = mid + t * direction + jitter * normal
    return _thick_polyline(pts, 1.8, size)


def sample(rng: np.random.Generator, defect: str | None = None, size: int = SIZE) -> Sample:
    """One image; ``defect`` None for a normal object, else one of :data:`DEFECTS` (``"any"`` picks one).
    Defect pixels lie on the object; a defect is redrawn until it covers at least 12 pixels."""
    if defect == "any":
        defect = DEFECTS[rng.integers(len(DEFECTS))]
    if defect is not None and defect not in DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; choose one of {', '.join(DEFECTS)} or 'any'")
    image = _background(rng, size)
    shape = SHAPES[rng.integers(len(SHAPES))]
    inside, geometry, (u, v) = _shape_mask(rng, shape, size)
    texture = _texture(rng, TEXTURES[rng.integers(len(TEXTURES))], u, v)
    x, y = _grid(size)
    shading = 1 - 0.18 * np.hypot(x - geometry[0] + 0.3 * geometry[2], y - geometry[1] + 0.3 * geometry[2]) / (2 * geometry[2])
    obj = np.clip(_object_colour(rng) * (texture * shading)[..., None], 0, 1)
    image = np.where(inside[..., None], obj, image).astype(np.float32)
    mask = np.zeros((size, size), bool)
    if defect is not None:
        for _ in range(20):
            mask = _defect_mask(rng, defect, geometry, size) & inside
            if mask.sum() >= 12:
                break
        colour = np.clip(DEFECT_RGB + rng.uniform(-0.05, 0.05, 3), 0, 1).astype(np.float32)
        shade = rng.uniform(0.9, 1.0, (size, size, 1)).astype(np.float32)
        image = np.where(mask[..., None], colour * shade, image).astype(np.float32)
    return Sample(image, mask, inside, shape, defect)


def samples(n: int, seed: int, defect: str | None = None, size: int = SIZE) -> list:
    rng = np.random.default_rng(seed)
    return [sample(rng, defect, size) for _ in range(n)]


def magenta_score(images: np.ndarray) -> np.ndarray:
    """``min(R, B) - G`` per pixel of (..., 3) images in [0, 1]."""
    images = np.asarray(images, np.float32)
    return np.minimum(images[..., 0], images[..., 2]) - images[..., 1]


def defect_pixels(images: np.ndarray, threshold: float = MAGENTA_THRESHOLD) -> np.ndarray:
    """Where an image of this world (real or generated) shows a defect: (..., H, W) bool from
    (..., H, W, 3) images in [0, 1]. The threshold sits near half coverage, so blurred edges split evenly."""
    return magenta_score(images) > threshold


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
