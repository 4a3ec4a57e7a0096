"""Demo quality against demo time: ``dualanodiff demo`` run with each option set below, one after the
other (run it on an otherwise idle machine: the times are the point), and a table of the results.

    .venv/bin/python scripts/demo_tradeoff.py --out /tmp/tradeoff            # all option sets
    .venv/bin/python scripts/demo_tradeoff.py --out /tmp/tradeoff --only shipped rank8
    .venv/bin/python scripts/demo_tradeoff.py --out /tmp/tradeoff --scheduler ddim --base-model STAGE1
        # docs/demo.md's table: DDIM on the STAGE1 base, the settings when the training options were chosen
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualanodiff_core.demo import run as demo  # noqa: E402

OPTIONS = {  # "shipped" is DemoConfig's defaults; --scheduler and --base-model apply to every set
    "shipped": {},
    "rank8_steps400": {"rank": 8, "steps": 400},
    "rank8": {"rank": 8},
    "rank8_steps800": {"rank": 8, "steps": 800},
    "rank8_lr2e-3_steps400": {"rank": 8, "lr": 2e-3, "steps": 400},
    "rank8_lr1.5e-3": {"rank": 8, "lr": 1.5e-3},
    "rank8_guidance3": {"rank": 8, "guidance": 3.0},
    "rank8_steps400_guidance4": {"rank": 8, "steps": 400, "guidance": 4.0},
    "rank8_steps400_guidance1.5": {"rank": 8, "steps": 400, "guidance": 1.5},
    "rank8_steps400_sample30": {"rank": 8, "steps": 400, "sample_steps": 30},
}
COLUMNS = ("alignment_iou", "defect_area_ratio", "stray_defect_colour", "nonempty_mask_share", "diversity")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--only", nargs="+", choices=tuple(OPTIONS), help="option sets to run (default: all)")
    p.add_argument("--defect", default="scratch")
    p.add_argument("--base-model", type=Path, default=demo.DEMO_MODEL)
    p.add_argument("--scheduler", default=demo.DemoConfig.scheduler, help="the demo's --scheduler for every set "
                   "(default: %(default)s)")
    args = p.parse_args(argv)
    rows = {}
    for name in args.only or OPTIONS:
        cfg = dataclasses.replace(demo.DemoConfig(), out=args.out / name, defect=args.defect, base_model=args.base_model,
                                  scheduler=args.scheduler, **OPTIONS[name])
        report = demo.run(cfg)
        rows[name] = {"options": OPTIONS[name], "seconds": report["seconds"],
                      **{f"{v}.{k}": report[v].get(k) for v in demo.VARIANTS for k in COLUMNS}}
        print(json.dumps({name: rows[name]}), flush=True)
    print("| options | seconds | " + " | ".join(f"SAIM {c}" for c in COLUMNS) + " | no-SAIM alignment IoU |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds']:.0f} | " + " | ".join(str(r[f'saim.{c}']) for c in COLUMNS)
              + f" | {r['no_saim.alignment_iou']} |")
    (args.out / "tradeoff.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
