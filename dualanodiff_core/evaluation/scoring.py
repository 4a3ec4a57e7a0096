"""Metrics of one detector's test maps: for the whole category and for each defect type.

A defect type's metrics use its own test images plus every normal test image (the pixels of other
defect types are left out); the category's use the whole test set. The pixels are sorted once and each
subset is read off that order.
"""
from __future__ import annotations

import torch

from .metrics import (PRO_LIMIT, image_metrics, image_scores, pixel_metrics, pr_curve, rank, region_ids,
                      roc_curve)
from .split import GOOD

CURVE_POINTS = 400


def thin(x: torch.Tensor, y: torch.Tensor, points: int = CURVE_POINTS) -> list:
    """A curve cut to at most ``points`` vertices (evenly spaced along it, ends kept), as [[x, y], ...]."""
    if x.numel() <= points:
        idx = torch.arange(x.numel())
    else:
        idx = torch.unique(torch.linspace(0, x.numel() - 1, points).round().long())
    return [[round(float(x[i]), 5), round(float(y[i]), 5)] for i in idx]


def score_test_maps(maps: torch.Tensor, masks: torch.Tensor, defects: list, limit: float = PRO_LIMIT,
                    curves: bool = False) -> dict:
    """``maps`` (N, H, W), ``masks`` (N, 1, H, W) bool, ``defects`` the defect type of each image
    (``good`` for normal ones). Returns {"category": metrics, "defects": {type: metrics}} and, with
    ``curves``, thinned pixel/image ROC and PR curves of the category."""
    masks = masks.reshape(maps.shape).bool()
    anomalous = torch.tensor([d != GOOD for d in defects])
    ranked = rank(maps, masks, region_ids(masks))
    scores = image_scores(maps)
    out = {"category": {**pixel_metrics(ranked, limit), **image_metrics(scores, anomalous)}, "defects": {}}
    goods = [i for i, d in enumerate(defects) if d == GOOD]
    for defect in sorted({d for d in defects if d != GOOD}):
        idx = torch.tensor([i for i, d in enumerate(defects) if d == defect] + goods)
        out["defects"][defect] = {**pixel_metrics(ranked.subset(idx), limit),
                                  **image_metrics(scores[idx], anomalous[idx])}
    if curves:
        image_ranked = rank(scores, anomalous)
        out["curves"] = {"pixel_roc": thin(*roc_curve(ranked)), "pixel_pr": thin(*pr_curve(ranked)),
                         "image_roc": thin(*roc_curve(image_ranked)), "image_pr": thin(*pr_curve(image_ranked))}
    return out
