#!/usr/bin/env python3
"""What holds a detector trained on the demo's generated pairs below one trained on the real shots: sets
that differ from the world's own defects in one respect each, evaluated as `dualanodiff demo --evaluate`
evaluates (64 px detectors, detector seeds 0-7, one CPU thread each).

- oracle: 64 world defect images (seed 7000) with their true masks: sharp pixels, exact labels;
- oracle-vae: the same images through the demo base model's VAE (encode, decode): soft pixels, exact labels;
- oracle-soft-box: the oracle images with only a box around the defect (3x the defect's size, as
  `generate --region auto` draws regions) from the VAE's reconstruction: what a placed pair looks like;
- placed64 (with --demo-out): 64 placed pairs (64 normal images x 1) from a demo run's SAIM checkpoint,
  against the demo's 16 x 2, to see whether the placed set's size matters.

    .venv/bin/python scripts/measure_eval_gap.py
    .venv/bin/python scripts/measure_eval_gap.py --demo-out dualanodiff-demo --sets placed64
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SETS = ("oracle", "oracle-vae", "oracle-soft-box", "placed64")


def oracle_sets(which: set) -> dict:
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from dualanodiff_core.demo import world as demo_world
    from dualanodiff_core.demo.run import DEMO_MODEL
    from dualanodiff_core.evaluation.loading import tensor_pairs

    samples = demo_world.samples(64, seed=7000, defect="scratch")
    images = np.stack([s.image for s in samples]).astype(np.float32)
    masks = np.stack([s.mask for s in samples])
    vae = AutoencoderKL.from_pretrained(DEMO_MODEL, subfolder="vae").eval()
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
        soft = ((vae.decode(vae.encode(x).latent_dist.mean).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    boxed = images.copy()
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        rows = slice(max(0, ys.min() - h), ys.max() + h + 1)
        cols = slice(max(0, xs.min() - w), xs.max() + w + 1)
        boxed[k, rows, cols] = soft[k, rows, cols]
    made = {"oracle": images, "oracle-vae": soft, "oracle-soft-box": boxed}
    return {name: tensor_pairs(made[name], masks, "scratch") for name in made if name in which}


def placed64(demo_out: Path, out: Path) -> Path:
    import numpy as np
    from PIL import Image

    from dualanodiff_core.demo import placement_stage
    from dualanodiff_core.demo.run import DemoConfig

    placement_stage.IMAGES, placement_stage.VARIATIONS = 64, 1
    few = demo_out / "few_shot"
    training = [np.asarray(Image.open(p)) > 127 for p in sorted((few / "masks").iterdir())]
    placement_stage.run_placement(DemoConfig(out=demo_out), demo_out / "checkpoints" / "demo_saim.safetensors",
                                  few / "masks", training, out, name="placed64")
    return out / "samples" / "placed64" / "world" / "scratch"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS[:3]), help="sets to evaluate (default: the "
                   "three oracle sets)")
    p.add_argument("--demo-out", type=Path, help="a `dualanodiff demo` output folder (for placed64)")
    p.add_argument("--out", type=Path, default=Path("eval-gap"), help="output folder (default: eval-gap)")
    args = p.parse_args(argv)
    if "placed64" in args.sets and args.demo_out is None:
        p.error("placed64 needs --demo-out (a dualanodiff demo output folder with its SAIM checkpoint)")
    from dualanodiff_core.evaluation.demo_world_eval import DemoEvalConfig, evaluate_demo_world

    sets = oracle_sets(set(args.sets))
    if "placed64" in args.sets:
        sets["placed64"] = placed64(args.demo_out, args.out)
    summary = evaluate_demo_world(sets, args.out / "evaluation", DemoEvalConfig(seeds=tuple(range(8)), baselines=()),
                                  log=lambda m: None)
    for name, s in summary["sets"].items():
        per_seed = " / ".join(f"{100 * r['category']['pixel_ap']:.1f}" for r in s["seeds"].values())
        print(f"{name}: pixel AP {100 * s['mean']['pixel_ap']:.1f} +- {100 * s['std']['pixel_ap']:.1f} ({per_seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
