"""Placement in the demo world, by ``--anomaly-outside`` mode, guidance and region size, on a finished
``dualanodiff demo`` folder (its SAIM checkpoint and few-shot masks).

    .venv/bin/dualanodiff demo --out dualanodiff-demo
    .venv/bin/python scripts/measure_placement.py --demo dualanodiff-demo --seeds 0 1   # table on stdout
    .venv/bin/python scripts/measure_placement.py --demo dualanodiff-demo --modes canvas --guidance 2.5 4 6 8
    .venv/bin/python scripts/measure_placement.py --demo dualanodiff-demo --modes canvas --region-grow 0.25 0.5 1 1.5

For each ``--anomaly-outside`` mode (free: the anomaly branch draws anywhere and its mask is cut to the
region; canvas: it is held to its empty grey canvas outside the region), each guidance, each
``--region-grow`` (the auto regions' room around the drawn defect size) and each seed,
16 normal world images x 2 variations are placed with ``generate --on-images --region auto`` and
measured with ``dualanodiff_core/demo/placement_stage.py``'s metrics (the table gives means over the
seeds). Writes ``placement.json`` into the demo folder.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualanodiff_core.demo import run as demo  # noqa: E402
from dualanodiff_core.demo.placement_stage import GUIDANCE, run_placement  # noqa: E402
from dualanodiff_core.generation.placement import AUTO_GROW  # noqa: E402

COLUMNS = ("change_outside_region", "anomaly_defect_in_region", "mask_in_region_kept", "alignment_iou_in_region",
           "nonempty_mask_share", "defect_area_ratio")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", type=Path, required=True, help="a finished `dualanodiff demo` output folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="placement seeds (default: 0)")
    ap.add_argument("--defect", default="scratch", help="the demo's --defect (default: scratch)")
    ap.add_argument("--modes", nargs="+", choices=("free", "canvas"), default=["free", "canvas"],
                    help="--anomaly-outside modes to compare (default: both)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[GUIDANCE],
                    help=f"classifier-free guidance values (default: the placement stage's {GUIDANCE:g})")
    ap.add_argument("--region-grow", type=float, nargs="+", default=[AUTO_GROW],
                    help=f"generate's --region-grow values (default: its default {AUTO_GROW:g})")
    args = ap.parse_args(argv)
    checkpoint = args.demo / "checkpoints" / "demo_saim.safetensors"
    masks_dir = args.demo / "few_shot" / "masks"
    if not checkpoint.is_file() or not masks_dir.is_dir():
        ap.error(f"{args.demo} is not a finished demo folder (no {checkpoint.name} or few_shot/masks)")
    from PIL import Image

    training = [np.asarray(Image.open(p)) > 127 for p in sorted(masks_dir.glob("*.png"))]
    rows = {}
    for mode, guidance, grow in itertools.product(args.modes, args.guidance, args.region_grow):
        per_seed = []
        name = f"{mode}, guidance {guidance:g}, region grow {grow:g}"
        for seed in args.seeds:
            cfg = demo.DemoConfig(out=args.demo, defect=args.defect, seed=seed)
            began = time.perf_counter()
            _, m = run_placement(cfg, checkpoint, masks_dir, training, args.demo, anomaly_outside=mode,
                                 name=f"placed_{mode}_g{guidance:g}_grow{grow:g}_{seed}", guidance=guidance,
                                 region_grow=grow)
            m["seconds"] = round(time.perf_counter() - began, 1)
            per_seed.append(m)
            print(f"{name}, seed {seed}: {json.dumps(m)}", file=sys.stderr)
        row = {k: round(float(np.mean([m[k] for m in per_seed])), 4) for k in COLUMNS + ("region_area_share", "seconds")}
        rows[name] = {**row, "per_seed": per_seed}
    columns = COLUMNS + ("region_area_share",)
    print("| anomaly branch outside the region, guidance, region grow | " + " | ".join(columns) + " | seconds |")
    print("|---" * (len(columns) + 2) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.4g}" for k in columns) + f" | {r['seconds']} |")
    (args.demo / "placement.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
