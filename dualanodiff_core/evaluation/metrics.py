"""Detection and localization metrics, exact and vectorised (torch; no per-threshold Python loops).

Every threshold metric is read off one descending sort of the scores: cumulative true and false
positives at the last position of each run of equal scores give the confusion counts at every distinct
threshold at once, so ties are handled the way a threshold sweep handles them (all tied scores are in
or out together).

- AUROC: trapezoid area under (FPR, TPR) from (0, 0) through every distinct threshold (equal to the
  Mann-Whitney statistic with ties counted half).
- AP: sum over distinct thresholds of (R_k - R_{k-1}) * P_k (step-wise, not interpolated; what
  scikit-learn's ``average_precision_score`` computes).
- F1-max: the largest 2PR/(P+R) over distinct thresholds, i.e. max 2TP / (TP + FP + positives).
- AU-PRO: per-region overlap (PRO) against the false-positive rate on normal pixels, integrated from
  FPR 0 to ``limit`` (0.3) and divided by ``limit``. Regions are the 8-connected components of every
  ground-truth mask; PRO at a threshold is the mean over all regions of the share of the region above
  it, which equals the cumulative sum of per-pixel weights 1 / (regions * region size) down the sort.
  The curve runs piecewise linearly from (0, 0) through every distinct threshold and is cut at
  ``limit`` by linear interpolation.

A metric that needs both classes and gets one (e.g. AUROC on all-normal images) returns ``nan``.
Image scores follow DRAEM: the maximum of the map mean-pooled over 21 x 21 pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..masks.extract import label_components

PRO_LIMIT = 0.3
IMAGE_POOL = 21


@dataclass
class RankedPixels:
    """Scores sorted once, descending, with what every metric needs alongside them. Confusion counts
    are computed on first use and kept."""

    scores: torch.Tensor    # (n,) float32, sorted descending
    labels: torch.Tensor    # (n,) bool, positive = anomalous
    owner: torch.Tensor     # (n,) int64, the image each entry came from (-1 when not per image)
    inv_size: torch.Tensor  # (n,) float64, 1 / size of the ground-truth region of an anomalous pixel, else 0
    regions: int            # ground-truth regions among these entries
    regions_per_image: torch.Tensor | None = None  # (B,) int64, to count regions of a subset
    _counts: tuple | None = None

    def subset(self, images) -> "RankedPixels":
        """The entries of the given image indices, still sorted (no new sort)."""
        images = torch.as_tensor(images, dtype=torch.int64).view(-1)
        size = 1 + max(int(self.owner.max()) if self.owner.numel() else 0, int(images.max()) if images.numel() else 0)
        keep = torch.zeros(size + 1, dtype=torch.bool)  # the last slot stands for "no image" (-1)
        keep[images] = True
        sel = keep[self.owner]
        per_image = self.regions_per_image
        regions = int(per_image[images].sum()) if per_image is not None else 0
        idx = torch.nonzero(sel).view(-1)  # one index list, four gathers
        return RankedPixels(self.scores[idx], self.labels[idx], self.owner[idx], self.inv_size[idx], regions, per_image)

    def counts(self) -> tuple:
        """(threshold ends, TP, FP) at every distinct threshold (float64), positives, negatives."""
        if self._counts is None:
            ends = _threshold_ends(self.scores)
            tp = torch.cumsum(self.labels.to(torch.int64), 0)[ends].double()
            fp = (ends + 1).double() - tp
            pos = float(tp[-1]) if tp.numel() else 0.0
            self._counts = (ends, tp, fp, pos, float(self.labels.numel()) - pos)
        return self._counts


def rank(scores: torch.Tensor, labels: torch.Tensor, regions: torch.Tensor | None = None) -> RankedPixels:
    """Sort ``scores`` with their ``labels`` (same shape). For (B, H, W) maps, ``regions`` (B, H, W)
    int64 ground-truth region ids (0 = none, see :func:`region_ids`) enable AU-PRO and subsets by image."""
    scores = scores.detach().float().cpu()
    labels = labels.detach().bool().cpu()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ in shape")
    flat = scores.reshape(-1)
    if torch.isnan(flat).any():
        raise ValueError("scores contain NaN")
    sorted_scores, order = torch.sort(flat, descending=True)  # the order inside a tie never matters
    if scores.ndim >= 2:
        per = scores[0].numel()
        owner = torch.div(order, per, rounding_mode="floor")
    else:
        owner = torch.full_like(order, -1)
    sorted_labels = labels.reshape(-1)[order]
    inv_size = torch.zeros(flat.shape, dtype=torch.float64)
    n_regions, per_image = 0, None
    if regions is not None:  # work on the anomalous pixels only: a few percent of all
        at = torch.nonzero(sorted_labels).view(-1)       # their places in the sorted order
        pixel = order[at]
        region = regions.cpu().long().reshape(-1)[pixel]
        if bool((region <= 0).any()):
            raise ValueError("every anomalous pixel needs a region id above 0 (see region_ids)")
        sizes = torch.bincount(region)
        ids = torch.nonzero(sizes).view(-1)
        n_regions = int(ids.numel())
        inv_size[at] = 1.0 / sizes[region].double()
        if scores.ndim >= 2:
            image_of = torch.zeros(sizes.shape, dtype=torch.int64)
            image_of[region] = torch.div(pixel, scores[0].numel(), rounding_mode="floor")
            per_image = torch.bincount(image_of[ids], minlength=scores.shape[0])
    return RankedPixels(sorted_scores, sorted_labels, owner, inv_size, n_regions, per_image)


def _threshold_ends(sorted_scores: torch.Tensor) -> torch.Tensor:
    """Index of the last entry of each run of equal scores (one per distinct threshold)."""
    n = sorted_scores.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    change = torch.nonzero(sorted_scores[1:] != sorted_scores[:-1]).view(-1)
    return torch.cat([change, torch.tensor([n - 1])])


def roc_curve(r: RankedPixels) -> tuple:
    """(FPR, TPR) from (0, 0) through every distinct threshold."""
    _, tp, fp, pos, neg = r.counts()
    if pos == 0 or neg == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fp / neg]), torch.cat([zero, tp / pos])


def pr_curve(r: RankedPixels) -> tuple:
    """(recall, precision) at every distinct threshold, highest threshold first."""
    _, tp, fp, pos, _ = r.counts()
    if pos == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return tp / pos, tp / (tp + fp)


def auroc(r: RankedPixels) -> float:
    fpr, tpr = roc_curve(r)
    if fpr.numel() == 0:
        return math.nan
    return float(torch.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(r: RankedPixels) -> float:
    recall, precision = pr_curve(r)
    if recall.numel() == 0:
        return math.nan
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float(torch.sum(steps * precision))


def f1_max(r: RankedPixels) -> float:
    _, tp, fp, pos, _ = r.counts()
    if pos == 0:
        return math.nan
    return float((2 * tp / (tp + fp + pos)).max())


def region_ids(masks: torch.Tensor) -> torch.Tensor:
    """8-connected ground-truth regions of (B, H, W) masks, ids unique across the whole batch."""
    return label_components(masks.bool().cpu(), 8)


def pro_curve(r: RankedPixels) -> tuple:
    """(FPR on normal pixels, PRO) from (0, 0) through every distinct threshold."""
    ends, tp, fp, pos, neg = r.counts()
    if r.regions == 0 or neg == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    pro = torch.cumsum(r.inv_size.double(), 0)[ends] / r.regions
    return torch.cat([zero, fp / neg]), torch.cat([zero, pro])


def area_up_to(x: torch.Tensor, y: torch.Tensor, limit: float) -> float:
    """Trapezoid area under a piecewise-linear curve with non-decreasing ``x`` on [0, limit]."""
    if x.numel() < 2:
        return math.nan
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    beyond = torch.nonzero(~inside).view(-1)
    if beyond.numel() and xs.numel():
        j = int(beyond[0])
        x0, x1, y0, y1 = float(x[j - 1]), float(x[j]), float(y[j - 1]), float(y[j])
        y_cut = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs = torch.cat([xs, torch.tensor([limit], dtype=x.dtype)])
        ys = torch.cat([ys, torch.tensor([y_cut], dtype=y.dtype)])
    return float(torch.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def au_pro(r: RankedPixels, limit: float = PRO_LIMIT) -> float:
    """Normalised area under the PRO curve up to FPR ``limit``: 1.0 is perfect."""
    fpr, pro = pro_curve(r)
    if fpr.numel() == 0:
        return math.nan
    return area_up_to(fpr, pro, limit) / limit


def image_scores(maps: torch.Tensor, pool: int = IMAGE_POOL) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) anomaly maps -> (B,) scores: max of the ``pool`` x ``pool`` mean
    (zero padding counted, as DRAEM's evaluation does)."""
    x = maps.float().reshape(maps.shape[0], 1, *maps.shape[-2:])
    # separable: a (pool x 1) then a (1 x pool) mean equals the pool x pool mean, at 2/pool of the cost
    x = F.avg_pool2d(x, (pool, 1), stride=1, padding=(pool // 2, 0))
    x = F.avg_pool2d(x, (1, pool), stride=1, padding=(0, pool // 2))
    return x.flatten(1).amax(1)


def pixel_metrics(r: RankedPixels, limit: float = PRO_LIMIT) -> dict:
    return {"pixel_auroc": auroc(r), "pixel_ap": average_precision(r), "pixel_f1_max": f1_max(r),
            "au_pro": au_pro(r, limit)}


def image_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    r = rank(scores, labels)
    return {"image_auroc": auroc(r), "image_ap": average_precision(r), "image_f1_max": f1_max(r)}


def all_metrics(maps: torch.Tensor, masks: torch.Tensor, anomalous: torch.Tensor | None = None,
                limit: float = PRO_LIMIT) -> dict:
    """Every metric for (B, H, W) maps and ground-truth masks; ``anomalous`` (B,) image labels
    (default: the mask is not empty)."""
    masks = masks.reshape(maps.shape[0], *maps.shape[-2:]).bool()
    maps = maps.reshape(masks.shape)
    anomalous = masks.flatten(1).any(1) if anomalous is None else anomalous.bool()
    ranked = rank(maps, masks, region_ids(masks))
    return {**pixel_metrics(ranked, limit), **image_metrics(image_scores(maps), anomalous)}


METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "au_pro", "image_auroc", "image_ap", "image_f1_max")
