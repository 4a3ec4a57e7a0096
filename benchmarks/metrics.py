"""Speed of the evaluation metrics (dualanodiff_core/evaluation/metrics.py) on a test set of MVTec size:
N anomaly maps of S x S pixels (default 300 of 256 px), half of the images with blob-shaped defects, the
maps quantised so that scores tie as softmax outputs do. Measured in one process, each stage separately,
the median of several rounds:

  regions    8-connected ground-truth regions of all masks (vectorised union-find)
  rank       one descending sort of every pixel with its label and region weight
  pixel      pixel AUROC, AP, F1-max and AU-PRO (FPR <= 0.3) read off that sort
  subsets    the same four for each of K defect types (its images + the normal ones), without re-sorting
  image      image scores (max of the 21 x 21 mean) and image AUROC, AP, F1-max

Prints a table and a JSON line.

    python benchmarks/metrics.py                        # 300 images of 256 px, 5 defect types
    python benchmarks/metrics.py --images 1000 --size 256
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_case(n: int, size: int, types: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    defects = []
    for i in range(n):
        if i % 2:
            defects.append("good")
            continue
        defects.append(f"type{(i // 2) % types}")
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            h, w = (int(v) for v in torch.randint(size // 32, size // 6, (2,), generator=g))
            y, x = (int(v) for v in torch.randint(0, size - max(h, w), (2,), generator=g))
            masks[i, y:y + h, x:x + w] = True
    maps = (torch.rand(n, size, size, generator=g) * 0.6 + masks * 0.35).clamp(0, 1)
    maps = (maps * 4096).round() / 4096  # ties, as float32 softmax outputs have
    return maps, masks, defects


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="test images (default: 300)")
    p.add_argument("--size", type=int, default=256, help="map side in pixels (default: 256)")
    p.add_argument("--types", type=int, default=5, help="defect types, for the per-type subsets (default: 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, median reported (default: 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()

    import torch

    from dualanodiff_core.evaluation import metrics as M

    if args.threads:
        torch.set_num_threads(args.threads)
    maps, masks, defects = make_case(args.images, args.size, args.types)
    anomalous = torch.tensor([d != "good" for d in defects])
    goods = [i for i, d in enumerate(defects) if d == "good"]
    subsets = [torch.tensor([i for i, d in enumerate(defects) if d == t] + goods) for t in sorted(set(defects) - {"good"})]
    stages = {k: [] for k in ("regions", "rank", "pixel", "subsets", "image", "total")}
    result = {}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        regions = M.region_ids(masks)
        t1 = time.perf_counter()
        ranked = M.rank(maps, masks, regions)
        t2 = time.perf_counter()
        result = M.pixel_metrics(ranked)
        t3 = time.perf_counter()
        for idx in subsets:
            M.pixel_metrics(ranked.subset(idx))
        t4 = time.perf_counter()
        result.update(M.image_metrics(M.image_scores(maps), anomalous))
        t5 = time.perf_counter()
        for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
            stages[k].append(v)
    med = {k: statistics.median(v) for k, v in stages.items()}
    where = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    pixels = args.images * args.size * args.size
    print(f"evaluation metrics: {args.images} maps of {args.size} px ({pixels / 1e6:.1f} M pixels), {len(subsets)} defect "
          f"types, median of {args.rounds} rounds on {where}")
    print(f"{'stage':<10}{'seconds':>10}")
    for k, v in med.items():
        print(f"{k:<10}{v:>10.2f}")
    print("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    print(json.dumps({"benchmark": "metrics", "images": args.images, "size": args.size, "types": len(subsets),
                      "rounds": args.rounds, "device": where, "seconds": med}))


if __name__ == "__main__":
    main()
