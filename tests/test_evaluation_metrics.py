"""The evaluation metrics against direct computations written here: a threshold sweep over every
distinct score, a breadth-first connected-component loop for the PRO regions, an explicit 21x21 window
for the image scores. Small random cases with many ties and images without any defect."""
import math
from collections import deque

import numpy as np
import pytest
import torch

from dualanodiff_core.evaluation import metrics as M


# --- direct computations ---------------------------------------------------------------------------

def sweep(scores, labels):
    """(threshold, TP, FP) for every distinct threshold, highest first."""
    s, y = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    return [(t, int(((s >= t) & y).sum()), int(((s >= t) & ~y).sum())) for t in sorted(set(s), reverse=True)]


def brute_auroc(scores, labels):
    y = np.asarray(labels, bool).ravel()
    p, n = y.sum(), (~y).sum()
    if p == 0 or n == 0:
        return math.nan
    pts = [(0.0, 0.0)] + [(fp / n, tp / p) for _, tp, fp in sweep(scores, labels)]
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))


def mann_whitney(scores, labels):
    s, y = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    pos, neg = s[y], s[~y]
    return float(np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg]))


def brute_ap(scores, labels):
    p = np.asarray(labels, bool).sum()
    if p == 0:
        return math.nan
    ap, last_recall = 0.0, 0.0
    for _, tp, fp in sweep(scores, labels):
        ap += (tp / p - last_recall) * (tp / (tp + fp))
        last_recall = tp / p
    return ap


def brute_f1(scores, labels):
    p = np.asarray(labels, bool).sum()
    if p == 0:
        return math.nan
    best = 0.0
    for _, tp, fp in sweep(scores, labels):
        prec, rec = tp / (tp + fp), tp / p
        best = max(best, 0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    return best


def bfs_regions(mask):
    """8-connected components of a 2-D bool array: a list of pixel lists."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    regions = []
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                queue, pixels = deque([(y, x)]), []
                seen[y, x] = True
                while queue:
                    cy, cx = queue.popleft()
                    pixels.append((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                queue.append((ny, nx))
                regions.append(pixels)
    return regions


def brute_au_pro(maps, masks, limit=0.3):
    maps, masks = np.asarray(maps, float), np.asarray(masks, bool)
    regions = [(i, r) for i in range(len(masks)) for r in bfs_regions(masks[i])]
    normal = maps[~masks]
    if not regions or normal.size == 0:
        return math.nan
    pts = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel()), reverse=True):
        fpr = float((normal >= t).mean())
        pro = float(np.mean([np.mean([maps[i][y, x] >= t for y, x in r]) for i, r in regions]))
        pts.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def brute_image_scores(maps, pool=21):
    maps = np.asarray(maps, float)
    r = pool // 2
    out = []
    for m in maps:
        h, w = m.shape
        best = -np.inf
        for y in range(h):
            for x in range(w):
                window = m[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
                best = max(best, window.sum() / pool ** 2)  # zero padding counts
        out.append(best)
    return np.array(out)


def random_case(seed, n=5, size=12, levels=6, normal_images=(1,)):
    """Quantised maps (many ties) and blob masks; the listed images carry no defect."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        if i in normal_images:
            continue
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 3, 2)
            hh, ww = rng.integers(1, 4, 2)
            masks[i, y:y + hh, x:x + ww] = True
    maps = np.round(rng.random((n, size, size)) * 0.6 + masks * rng.random() * 0.6, 1)
    maps = (np.floor(maps * levels) / levels).astype(np.float32)
    return maps, masks


def close(a, b, tol=1e-9):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


# --- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_threshold_metrics_match_a_sweep(seed):
    maps, masks = random_case(seed)
    r = M.rank(torch.from_numpy(maps), torch.from_numpy(masks))
    assert close(M.auroc(r), brute_auroc(maps, masks))
    assert close(M.auroc(r), mann_whitney(maps, masks))
    assert close(M.average_precision(r), brute_ap(maps, masks))
    assert close(M.f1_max(r), brute_f1(maps, masks))


@pytest.mark.parametrize("seed", range(6))
def test_au_pro_matches_a_component_loop(seed):
    maps, masks = random_case(seed, normal_images=(0, 3))
    ranked = M.rank(torch.from_numpy(maps), torch.from_numpy(masks), M.region_ids(torch.from_numpy(masks)))
    for limit in (0.3, 0.05, 1.0):
        assert close(M.au_pro(ranked, limit), brute_au_pro(maps, masks, limit), 1e-6)


def test_all_ties_and_perfect_and_inverted_maps():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 1:3, 1:4] = True
    flat = np.full(masks.shape, 0.5, np.float32)
    r = M.rank(torch.from_numpy(flat), torch.from_numpy(masks), M.region_ids(torch.from_numpy(masks)))
    assert M.auroc(r) == 0.5 == brute_auroc(flat, masks)
    assert close(M.average_precision(r), masks.mean())
    assert close(M.au_pro(r), brute_au_pro(flat, masks, 0.3))
    perfect = masks.astype(np.float32)
    r = M.rank(torch.from_numpy(perfect), torch.from_numpy(masks), M.region_ids(torch.from_numpy(masks)))
    assert M.auroc(r) == M.average_precision(r) == M.f1_max(r) == 1.0
    assert close(M.au_pro(r), 1.0, 1e-12)
    r = M.rank(torch.from_numpy(1 - perfect), torch.from_numpy(masks), M.region_ids(torch.from_numpy(masks)))
    assert M.auroc(r) == 0.0 and M.au_pro(r) == 0.0


def test_all_normal_images_give_nan_not_a_number():
    maps = torch.rand(3, 8, 8)
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    out = M.all_metrics(maps, masks)
    assert all(math.isnan(v) for v in out.values()), out
    only_defects = M.all_metrics(maps, torch.ones(3, 8, 8, dtype=torch.bool))
    assert math.isnan(only_defects["pixel_auroc"]) and math.isnan(only_defects["au_pro"])
    assert only_defects["pixel_ap"] == 1.0


@pytest.mark.parametrize("size", [16, 25])
def test_image_scores_are_the_max_of_the_21x21_mean(size):
    rng = np.random.default_rng(size)
    maps = rng.random((3, size, size)).astype(np.float32)
    np.testing.assert_allclose(M.image_scores(torch.from_numpy(maps)).numpy(), brute_image_scores(maps), rtol=1e-5)


def test_image_metrics_match_a_sweep_with_ties():
    scores = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.2, 0.2, 0.1, 0.9])
    labels = torch.tensor([1, 1, 0, 1, 0, 1, 0, 0], dtype=torch.bool)
    out = M.image_metrics(scores, labels)
    assert close(out["image_auroc"], brute_auroc(scores, labels))
    assert close(out["image_ap"], brute_ap(scores, labels))
    assert close(out["image_f1_max"], brute_f1(scores, labels))


def test_subsets_agree_with_metrics_computed_on_the_subset_alone():
    maps, masks = random_case(11, n=7, normal_images=(2, 5))
    t_maps, t_masks = torch.from_numpy(maps), torch.from_numpy(masks)
    ranked = M.rank(t_maps, t_masks, M.region_ids(t_masks))
    for idx in ([0, 2, 5], [1, 3, 4, 6], [2, 5]):
        sub = ranked.subset(torch.tensor(idx))
        alone = M.rank(t_maps[idx], t_masks[idx], M.region_ids(t_masks[idx]))
        for metric in (M.auroc, M.average_precision, M.f1_max, M.au_pro):
            assert close(metric(sub), metric(alone), 1e-9), (idx, metric.__name__)


def test_regions_are_eight_connected_and_unique_across_images():
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True          # diagonal: one region
    masks[0, 3, 3] = True                            # a second one
    masks[1, 0, 0] = True                            # same place, other image: a third
    ids = M.region_ids(masks)
    assert len(set(ids[masks].tolist())) == 3
    assert ids[0, 0, 0] == ids[0, 1, 1]


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        M.rank(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))
