"""Compare two demo autoencoders by what the demo needs of them, not by their bytes.

    .venv/bin/python scripts/train_tiny_base.py --vae-only --out /tmp/vae_rerun
    .venv/bin/python scripts/compare_autoencoders.py dualanodiff_core/demo/model/vae /tmp/vae_rerun/vae

Float training does not give the same bytes on another CPU (see the README), so a re-run of
``train_tiny_base.py`` is checked against the shipped weights by the VAE stage of the demo's stage
table: per defect kind, the IoU of the defect found by colour before and after the round trip (world
images and the anomaly branch's targets), the area the scratch grows to, and the alignment IoU that
perfectly aligned pairs keep through it (the ceiling of the demo's metric). Also the largest weight
difference, for scale. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualanodiff_core.demo import stages as demo_stages, world as demo_world  # noqa: E402
from dualanodiff_core.demo.run import DemoConfig  # noqa: E402


def vae_stage(folder: Path, threshold: float) -> dict:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder).float().eval()
    out = {}
    for defect in demo_world.DEFECTS:
        iou = demo_stages.vae_defect_iou(vae, defect)
        out[defect] = {"global_iou": iou["global"], "anomaly_iou": iou["anomaly"], "area_ratio": iou["area_ratio"],
                       "pieces": iou["pieces"]["mean_pieces"],
                       "alignment_ceiling": demo_stages.vae_alignment_ceiling(vae, defect, threshold)}
    return out


def largest_difference(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    wa, wb = (load_file(str(next(Path(f).glob("*.safetensors")))) for f in (a, b))
    diffs = {k: (wa[k].float() - wb[k].float()).abs().max().item() for k in wa if k in wb}
    worst = max(diffs, key=diffs.get)
    return {"tensors": len(diffs), "differing": sum(d > 0 for d in diffs.values()), "largest": [worst, diffs[worst]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path, help="an autoencoder folder (config.json and safetensors), e.g. the shipped one")
    p.add_argument("second", type=Path, help="another, e.g. the vae/ folder of a --vae-only re-run")
    p.add_argument("--threshold", type=float, default=DemoConfig.mask_threshold, help="mask threshold (the demo's)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    for folder in (args.first, args.second):
        if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
            p.error(f"{folder} is not an autoencoder folder (needs config.json and a .safetensors file); "
                    "pass the vae/ folder inside a model folder")
    torch.set_num_threads(args.threads)
    report = {str(f): vae_stage(f, args.threshold) for f in (args.first, args.second)}
    report["weights"] = largest_difference(args.first, args.second)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
