"""Where the demo loses quality: one measurement per stage, on a finished ``dualanodiff demo`` folder.

    .venv/bin/dualanodiff demo --out dualanodiff-demo
    .venv/bin/python scripts/measure_demo_stages.py --demo dualanodiff-demo     # table on stdout

Stages (``dualanodiff_core/demo/stages.py`` holds the measurements):
1. VAE round trip: IoU of the defect found by colour before and after encode/decode (world defect
   images, and the anomaly branch's targets: the defect alone on mid grey), and the alignment IoU of
   perfectly aligned real pairs after it (the most the demo's metric can reach with this VAE).
2. Base model: shape fidelity (IoU of the object with the nearest true world object) and detail of its
   plain samples, beside the same numbers for real world images, for real images through the VAE alone,
   and for real images noised to t = 300 and 700 and denoised back by the UNet (what it keeps).
3. Few-shot training: defect area ratio, stray defect colour and shape fidelity of the demo's
   generated global images, per model.
4. Sampling settings: the SAIM model sampled again with other step counts and guidance scales.
5. Mask extraction: the extracted mask against the anomaly image's own defect pixels (extraction
   alone), the two branches' defect pixels against each other (alignment alone), and the demo's
   alignment IoU at other mask thresholds.
Writes ``stages.json`` into the demo folder; samples of stage 4 go to ``<demo>/stages/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualanodiff_core.demo import run as demo, stages as demo_stages, world as demo_world  # noqa: E402
from dualanodiff_core.formats.base_model import load_base_model  # noqa: E402
from dualanodiff_core.masks.extract import extract_masks  # noqa: E402

SAMPLING = ((15, 2.5), (30, 2.5), (50, 2.5), (15, 1.5), (15, 4.0), (15, 6.0))
THRESHOLDS = (0.1, 0.15, 0.2, 0.3, 0.4)


def config_of(folder: Path) -> demo.DemoConfig:
    saved = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["config"]
    saved.setdefault("scheduler", "ddim")  # demo runs before the scheduler was an option sampled with DDIM
    fields = {f.name: f for f in dataclasses.fields(demo.DemoConfig)}
    return demo.DemoConfig(**{k: Path(v) if k in ("out", "base_model") else v for k, v in saved.items() if k in fields})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, required=True, help="folder of a finished `dualanodiff demo` run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-sampling-sweep", action="store_true", help="skip stage 4 (the slow one)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config_of(args.demo)
    base = load_base_model(cfg.base_model)
    library = demo_stages.shape_library()
    training = [s.mask for s in demo_world.samples(cfg.shots, seed=1000 + cfg.seed, defect=cfg.defect)]
    out = {"defect": cfg.defect}

    out["vae_defect_iou"] = demo_stages.vae_defect_iou(base.vae, cfg.defect)
    out["vae_alignment_ceiling"] = demo_stages.vae_alignment_ceiling(base.vae, cfg.defect, cfg.mask_threshold)
    out["base_model"] = figures = demo_stages.base_model_figures(base, library)
    out["shape_fidelity"] = {"real": figures["real"]["shape_fidelity"], "base_model": figures["shape_fidelity"]}
    samples = {}
    for variant in demo.VARIANTS:
        root = args.demo / "samples" / variant / "world" / cfg.defect
        if root.is_dir():
            samples[variant] = s = demo.read_samples(root, cfg.pairs)
            out[variant] = {**demo.metrics(s, training), **demo_stages.extraction_stats(s),
                            **demo_stages.defect_pieces(s["image"]),
                            "shape_fidelity": round(float(demo_stages.shape_fidelity(s["image"], library).mean()), 4)}
    saim = samples["saim"]
    sweep = {}
    for th in THRESHOLDS:
        masks = extract_masks(torch.from_numpy(saim["fg"]), "threshold", threshold=th).binary[:, 0].numpy() > 0.5
        sweep[str(th)] = demo.metrics({**saim, "mask": masks}, training)["alignment_iou"]
    out["mask_threshold_sweep"] = sweep
    if not args.no_sampling_sweep:
        ckpt = args.demo / "checkpoints" / "demo_saim.safetensors"
        rows = {}
        for steps, guidance in SAMPLING:
            run_cfg = dataclasses.replace(cfg, sample_steps=steps, guidance=guidance)
            root = demo._generate(run_cfg, ckpt, args.demo / "stages" / f"steps{steps}_g{guidance}", run_cfg.pairs)
            swept = demo.read_samples(root, cfg.pairs)
            rows[f"{steps} steps, guidance {guidance}"] = {**demo.metrics(swept, training),
                                                            **demo_stages.defect_pieces(swept["image"])}
        out["sampling_sweep"] = rows
    (args.demo / "stages.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
