"""The defect regions of a binary mask: 8-connected components, and each one's outline traced along
pixel edges.

Pixel ``(x, y)`` is the unit square ``[x, x+1] x [y, y+1]``; outlines run along those squares' edges, so a
polygon of lattice points holds exactly the pixels whose centres lie inside it (a one-pixel scratch is a
one-pixel-wide polygon, not a line). Regions are 8-connected (pixels touching at a corner belong together,
so a diagonal scratch one pixel wide stays one region); the background inside a region is then
4-connected, and a background area it encloses is a hole of that region.

Everything is numpy on whole arrays; the only Python loops run over boundary edges of the cycles and over
the few regions and holes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONNECTIVITY = 8


@dataclass
class Regions:
    """The components of one mask: ``labels`` (H, W) int32, 0 = background, 1..count in the raster order
    of each region's first pixel; per region (index k-1 for label k) its pixel ``area`` and ``bbox``
    (x, y, width, height in pixels)."""

    labels: np.ndarray
    count: int
    area: np.ndarray
    bbox: np.ndarray  # (count, 4) int64


def _row_runs(mask: np.ndarray):
    """Horizontal runs of foreground: row, start column, end column (exclusive), in raster order."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)
    _, ends = np.nonzero(step == -1)
    return rows, starts, ends


def _run_image(shape, rows, starts, ends) -> np.ndarray:
    """(H*W,) array: the run index of each foreground pixel, -1 elsewhere."""
    h, w = shape
    ids = np.full(h * w, -1, np.int64)
    lengths = ends - starts
    if lengths.size:
        first = rows * w + starts
        offsets = np.repeat(first - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        ids[offsets + np.arange(lengths.sum())] = np.repeat(np.arange(lengths.size), lengths)
    return ids


def _touching_runs(ids: np.ndarray, shape, connectivity: int) -> tuple:
    """Pairs of run indices in neighbouring rows whose pixels touch (sides, and corners for 8)."""
    h, w = shape
    grid = ids.reshape(h, w)
    upper, lower = grid[:-1], grid[1:]
    pairs = [(upper, lower)]
    if connectivity == 8:
        pairs += [(upper[:, :-1], lower[:, 1:]), (upper[:, 1:], lower[:, :-1])]
    a = np.concatenate([u[(u >= 0) & (v >= 0)] for u, v in pairs])
    b = np.concatenate([v[(u >= 0) & (v >= 0)] for u, v in pairs])
    return a, b


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root (smallest member) of each of ``n`` nodes joined by the edges ``a``-``b``: min-label
    propagation with pointer jumping, all in numpy."""
    parent = np.arange(n)
    while True:
        pa, pb = parent[a], parent[b]
        low = np.minimum(pa, pb)
        np.minimum.at(parent, pa, low)
        np.minimum.at(parent, pb, low)
        while True:  # pointer jumping: every node straight to its current root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent[a], parent[b]):
            return parent


def _extent(fg: np.ndarray):
    """The rows and columns holding foreground, as slices (None when there is none)."""
    rows, cols = np.nonzero(fg.any(axis=1))[0], np.nonzero(fg.any(axis=0))[0]
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def label_regions(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> Regions:
    """Connected components of ``mask`` (nonzero = defect), numbered in raster order."""
    fg = np.asarray(mask) != 0
    if fg.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {fg.shape}")
    extent = _extent(fg)
    if extent is None:
        return Regions(np.zeros(fg.shape, np.int32), 0, np.zeros(0, np.int64), np.zeros((0, 4), np.int64))
    inner = _label_crop(fg[extent], connectivity)
    labels = np.zeros(fg.shape, np.int32)
    labels[extent] = inner.labels
    inner.bbox[:, 0] += extent[1].start
    inner.bbox[:, 1] += extent[0].start
    return Regions(labels, inner.count, inner.area, inner.bbox)


def _label_crop(fg: np.ndarray, connectivity: int) -> Regions:
    h, w = fg.shape
    rows, starts, ends = _row_runs(fg)
    labels = np.zeros(h * w, np.int32)
    ids = _run_image((h, w), rows, starts, ends)
    root = _components(rows.size, *_touching_runs(ids, (h, w), connectivity))
    roots, run_label = np.unique(root, return_inverse=True)  # roots are first runs: raster order
    run_label = run_label + 1
    labels[ids >= 0] = run_label[ids[ids >= 0]]
    count = roots.size
    area = np.bincount(run_label, weights=ends - starts, minlength=count + 1)[1:].astype(np.int64)
    x0 = np.full(count + 1, w, np.int64)
    y0 = np.full(count + 1, h, np.int64)
    x1 = np.zeros(count + 1, np.int64)
    y1 = np.zeros(count + 1, np.int64)
    np.minimum.at(x0, run_label, starts)
    np.maximum.at(x1, run_label, ends)
    np.minimum.at(y0, run_label, rows)
    np.maximum.at(y1, run_label, rows + 1)
    bbox = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)[1:]
    return Regions(labels.reshape(h, w), count, area, bbox)


# Directions of boundary edges, clockwise on screen (y down): right, down, left, up.
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])


def _boundary_edges(fg: np.ndarray):
    """Every pixel edge between foreground and background, oriented with the foreground on its right
    (outer outlines run clockwise on screen, holes counter-clockwise): start lattice point (x, y),
    direction (index into _STEP) and the foreground pixel it bounds (flat index)."""
    h, w = fg.shape
    p = np.zeros((h + 2, w + 2), bool)
    p[1:-1, 1:-1] = fg
    inner = p[1:-1, 1:-1]
    free = (~p[:-2, 1:-1], ~p[1:-1, 2:], ~p[2:, 1:-1], ~p[1:-1, :-2])  # above, right, below, left
    corner = ((0, 0), (1, 0), (1, 1), (0, 1))  # start of the top, right, bottom, left edge of a pixel
    xs, ys, dirs, pix = [], [], [], []
    for d, (side, (cx, cy)) in enumerate(zip(free, corner)):
        y, x = np.nonzero(inner & side)
        xs.append(x + cx)
        ys.append(y + cy)
        dirs.append(np.full(x.size, d))
        pix.append(y * w + x)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(dirs), np.concatenate(pix)


def _cycles(x, y, d, width: int) -> list:
    """The boundary edges linked into closed cycles (lists of edge indices). Where two regions' pixels
    touch only at a corner, a lattice point starts two edges: the walk turns left there, which keeps
    those pixels in one outline (8-connectivity) and a hole's outline separate."""
    start = y * (width + 1) + x
    ex, ey = x + _STEP[d, 0], y + _STEP[d, 1]
    end = ey * (width + 1) + ex
    order = np.argsort(start, kind="stable")
    sorted_start = start[order]
    first = np.searchsorted(sorted_start, end, "left")
    many = np.searchsorted(sorted_start, end, "right") - first
    nxt = order[first]
    pinch = np.nonzero(many == 2)[0]
    if pinch.size:
        other = order[first[pinch] + 1]
        left = (d[pinch] - 1) % 4
        nxt[pinch] = np.where(d[other] == left, other, nxt[pinch])
    nxt = nxt.tolist()
    seen = bytearray(len(nxt))
    cycles = []
    for e0 in range(len(nxt)):
        if seen[e0]:
            continue
        cycle, e = [], e0
        while not seen[e]:
            seen[e] = 1
            cycle.append(e)
            e = nxt[e]
        cycles.append(cycle)
    return cycles


@dataclass
class Outline:
    """One region's outline: the outer ring and its holes, each an (N, 2) int array of lattice points
    (x, y) visited in order, one per unit edge (not simplified)."""

    outer: np.ndarray
    holes: list


def region_outlines(regions: Regions) -> list:
    """One ``Outline`` per region, in label order."""
    outlines = [Outline(np.zeros((0, 2), np.int64), []) for _ in range(regions.count)]
    if regions.count == 0:
        return outlines
    rows, cols = _extent(regions.labels > 0)
    crop = regions.labels[rows, cols]
    x, y, d, pix = _boundary_edges(crop > 0)
    flat_labels = crop.ravel()
    offset = np.array([cols.start, rows.start])
    for cycle in _cycles(x, y, d, crop.shape[1]):
        idx = np.asarray(cycle)
        ring = np.stack([x[idx], y[idx]], axis=1) + offset
        label = flat_labels[pix[idx[0]]]
        nx = np.roll(ring[:, 0], -1)
        ny = np.roll(ring[:, 1], -1)
        twice_area = int(np.sum(ring[:, 0] * ny - nx * ring[:, 1]))
        if twice_area > 0:  # clockwise on screen: the outer outline
            outlines[label - 1].outer = ring
        else:
            outlines[label - 1].holes.append(ring)
    return outlines


def _bridge(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``outer`` with ``hole`` spliced in: from the hole's leftmost (then topmost) point straight left
    along its lattice row to the nearest point of ``outer``, round the hole, and back the same way. The
    cut is traversed twice in opposite directions, so it encloses nothing: every pixel centre keeps its
    inside/outside (even-odd and non-zero alike), and the cut runs through the region's own pixels."""
    j = np.lexsort((hole[:, 1], hole[:, 0]))[0]
    x0, y0 = hole[j]
    hole = np.roll(hole, -j, axis=0)
    on_row = np.nonzero((outer[:, 1] == y0) & (outer[:, 0] < x0))[0]
    k = on_row[np.argmax(outer[on_row, 0])]
    xk = outer[k, 0]
    there = np.stack([np.arange(xk + 1, x0), np.full(x0 - xk - 1, y0)], axis=1)
    back = there[::-1]
    return np.concatenate([outer[:k + 1], there, hole, hole[:1], back, outer[k:]])


def simplify(ring: np.ndarray) -> np.ndarray:
    """Drop the points where the outline goes straight on (exact: the same polygon, fewer points)."""
    if len(ring) < 3:
        return ring
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    keep = np.any(before != after, axis=1)
    return ring[keep]


def single_polygon(outline: Outline) -> np.ndarray:
    """The region as one polygon without holes (for formats that have none): each hole joined to the
    outer outline by a cut of zero width (see ``_bridge``); holes are joined in order of their leftmost
    point, so a cut only ever meets the outline built so far. Simplified; (N, 2) lattice points."""
    ring = outline.outer
    for hole in sorted(outline.holes, key=lambda r: (int(r[:, 0].min()), int(r[r[:, 0] == r[:, 0].min(), 1].min()))):
        ring = _bridge(ring, hole)
    return simplify(ring)
