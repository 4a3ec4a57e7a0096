"""Compare two demo base models by what the demo needs of them, not by their bytes.

    .venv/bin/python scripts/train_tiny_base.py --vae-only --out /tmp/vae_rerun
    .venv/bin/python scripts/compare_base_models.py dualanodiff_core/demo/model/vae /tmp/vae_rerun/vae
    .venv/bin/python scripts/train_tiny_base.py --vae dualanodiff_core/demo/model --out /tmp/unet_rerun
    .venv/bin/python scripts/compare_base_models.py dualanodiff_core/demo/model /tmp/unet_rerun

Float training does not give the same bytes on another CPU (see docs/demo.md), so a re-run of
``train_tiny_base.py`` is checked against the shipped weights by the stages of the demo's stage table
that the base model decides:

- the autoencoder (both arguments an autoencoder folder, or both a model folder): per defect kind, the
  IoU of the defect found by colour before and after the round trip (world images and the anomaly
  branch's targets), the area the defect grows to, its pieces, and the alignment IoU that perfectly
  aligned pairs keep through it (the ceiling of the demo's metric);
- the base model (both a model folder): shape fidelity of its plain samples (the IoU of each sample's
  object with the nearest true world object; real world images score 0.939), their texture and edge
  detail against real images', the share of samples that show an object at all, and what the UNet keeps
  of real images noised to t = 300 and 700 (beside what the autoencoder alone keeps).

Also, per component, how many tensors differ and the largest difference, for scale. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualanodiff_core.demo import stages as demo_stages, world as demo_world  # noqa: E402
from dualanodiff_core.demo.run import DemoConfig  # noqa: E402

COMPONENTS = ("vae", "unet", "text_encoder")


def is_model_folder(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def is_component_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def vae_stage(vae, threshold: float, defects=demo_world.DEFECTS) -> dict:
    out = {}
    for defect in defects:
        iou = demo_stages.vae_defect_iou(vae, defect)
        out[defect] = {"global_iou": iou["global"], "anomaly_iou": iou["anomaly"], "area_ratio": iou["area_ratio"],
                       "pieces": iou["pieces"]["mean_pieces"],
                       "alignment_ceiling": demo_stages.vae_alignment_ceiling(vae, defect, threshold)}
    return out


def stages(folder: Path, threshold: float, library: np.ndarray | None, defects=demo_world.DEFECTS) -> dict:
    if not is_model_folder(folder):
        from diffusers import AutoencoderKL

        return {"vae": vae_stage(AutoencoderKL.from_pretrained(folder).float().eval(), threshold, defects)}
    from dualanodiff_core.formats.base_model import load_base_model

    base = load_base_model(folder)
    return {"vae": vae_stage(base.vae, threshold, defects), "base_model": demo_stages.base_model_figures(base, library),
            "scaling_factor": base.vae.config.scaling_factor}


def largest_difference(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    wa, wb = (load_file(str(next(Path(f).glob("*.safetensors")))) for f in (a, b))
    diffs = {k: (wa[k].float() - wb[k].float()).abs().max().item() for k in wa if k in wb}
    worst = max(diffs, key=diffs.get)
    return {"tensors": len(diffs), "differing": sum(d > 0 for d in diffs.values()), "largest": [worst, diffs[worst]]}


def weight_differences(first: Path, second: Path) -> dict:
    if not is_model_folder(first):
        return {"vae": largest_difference(first, second)}
    return {name: largest_difference(first / name, second / name) for name in COMPONENTS}


def check_pair(parser: argparse.ArgumentParser, first: Path, second: Path) -> None:
    kinds = []
    for folder in (first, second):
        if is_model_folder(folder):
            missing = [name for name in COMPONENTS if not is_component_folder(folder / name)]
            if missing:
                parser.error(f"{folder} is a model folder without {', '.join(missing)} (config.json and a "
                             ".safetensors file each); a --vae-only run writes only vae/: pass FOLDER/vae for it")
            kinds.append("a model folder")
        elif is_component_folder(folder):
            kinds.append("an autoencoder folder")
        else:
            parser.error(f"{folder} is neither a model folder (model_index.json, unet/, vae/, text_encoder/) nor an "
                         "autoencoder folder (config.json and a .safetensors file)")
    if kinds[0] != kinds[1]:
        parser.error(f"{first} is {kinds[0]} and {second} {kinds[1]}: compare like with like "
                     "(for a model folder's autoencoder pass FOLDER/vae)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=Path, help="a model folder (e.g. the shipped dualanodiff_core/demo/model) or an "
                                            "autoencoder folder (e.g. its vae/)")
    p.add_argument("second", type=Path, help="the same kind of folder, e.g. a re-run of scripts/train_tiny_base.py "
                                             "(its --out, or --out/vae of a --vae-only run)")
    p.add_argument("--threshold", type=float, default=DemoConfig.mask_threshold, help="mask threshold (the demo's)")
    p.add_argument("--defects", nargs="+", choices=demo_world.DEFECTS, default=list(demo_world.DEFECTS),
                   help="defect kinds of the autoencoder stage (default: all)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    check_pair(p, args.first, args.second)
    torch.set_num_threads(args.threads)
    library = demo_stages.shape_library() if is_model_folder(args.first) else None
    report = {str(f): stages(f, args.threshold, library, args.defects) for f in (args.first, args.second)}
    report["weights"] = weight_differences(args.first, args.second)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
