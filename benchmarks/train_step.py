"""Time per training step and peak memory of the dual model on the full SD 1.5 architecture with
random weights (built from the bundled configs, nothing downloaded), through the real trainer code.

Each configuration runs in its own subprocess (peak memory is per process), side by side in one run:

    python benchmarks/train_step.py --resolution 256 --pairs 1 --steps 2
    python benchmarks/train_step.py --resolution 512 --pairs 4 --configs fp16+ckpt   # on a GPU

Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

CONFIGS = {  # name -> (mixed precision, gradient checkpointing)
    "fp32": ("no", False),
    "fp32+ckpt": ("no", True),
    "bf16": ("bf16", False),
    "bf16+ckpt": ("bf16", True),
    "fp16": ("fp16", False),
    "fp16+ckpt": ("fp16", True),
}


def random_sd15(dtype_name: str):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dualanodiff_core.formats.base_model import BUNDLED_CONFIG, BaseModel, _read_json, load_tokenizer
    from tiny_models import write_tiny_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_read_json(BUNDLED_CONFIG / "unet" / "config.json"))
    vae = AutoencoderKL(**_read_json(BUNDLED_CONFIG / "vae" / "config.json"))
    te = CLIPTextModel(CLIPTextConfig(**_read_json(BUNDLED_CONFIG / "text_encoder" / "config.json")))
    tok_dir = Path(tempfile.mkdtemp())
    write_tiny_tokenizer(tok_dir)
    for m in (unet, vae, te):
        m.requires_grad_(False)
    return BaseModel(unet, vae, te, load_tokenizer(tok_dir), _read_json(BUNDLED_CONFIG / "scheduler" / "scheduler_config.json"), "random")


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:
        return float("nan")


def run_one(name: str, resolution: int, pairs: int, steps: int, bcm: bool) -> dict:
    import torch
    from accelerate import Accelerator

    from dualanodiff_core.training.train_args import parse_args
    from dualanodiff_core.training.trainer import DualTrainer
    from synthetic_data import write_mvtec_category, write_object_masks

    precision, ckpt = CONFIGS[name]
    data = write_mvtec_category(Path(tempfile.mkdtemp()) / "obj", n=3, size=resolution)
    argv = ["--mvtec", str(data), "--defect", "scratch", "--split", "1", "--base-model", "unused",
            "--output-dir", tempfile.mkdtemp(), "--resolution", str(resolution), "--pairs-per-step", str(pairs),
            "--mixed-precision", precision]
    if ckpt:
        argv.append("--gradient-checkpointing")
    if bcm:
        argv += ["--bcm", "--object-masks", str(write_object_masks(Path(tempfile.mkdtemp()), ["000"], resolution))]
    args = parse_args(argv)
    acc = Accelerator(mixed_precision=precision)
    trainer = DualTrainer(args, acc, random_sd15(precision))
    if acc.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train_step(0)  # warm-up
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for step in range(1, steps + 1):
        trainer.train_step(step)
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - began) / steps
    trainable = sum(p.numel() for p in trainer.trainable.values())
    return {"config": name, "s_per_step": round(per_step, 3), "peak_mb": round(peak_memory_mb(acc.device)),
            "trainable_params_m": round(trainable / 1e6, 1), "device": str(acc.device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=256, help="training resolution in pixels (default: 256)")
    p.add_argument("--pairs", type=int, default=1, help="pairs per step (default: 1)")
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step (default: 2)")
    p.add_argument("--bcm", action="store_true", help="train with BCM (adds the reference pass)")
    p.add_argument("--configs", default="fp32,fp32+ckpt,bf16+ckpt",
                   help=f"comma list out of {', '.join(CONFIGS)} (default: fp32,fp32+ckpt,bf16+ckpt)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.resolution, args.pairs, args.steps, args.bcm)))
        return
    rows = []
    for name in args.configs.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--resolution", str(args.resolution), "--pairs", str(args.pairs),
               "--steps", str(args.steps)] + (["--bcm"] if args.bcm else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if out.returncode:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["s_per_step"]
    print(f"DualAnoDiff training step, SD 1.5 architecture (random weights), {args.resolution} px, "
          f"{args.pairs} pair(s)/step{', BCM' if args.bcm else ''}; {platform.processor() or platform.machine()}")
    print(f"{'config':<12}{'s/step':>10}{'vs first':>10}{'peak MB':>10}  device")
    for r in rows:
        print(f"{r['config']:<12}{r['s_per_step']:>10.2f}{r['s_per_step'] / base:>10.2f}{r['peak_mb']:>10}  {r['device']}")
    print(json.dumps({"benchmark": "train_step", "resolution": args.resolution, "pairs": args.pairs,
                      "bcm": args.bcm, "rows": rows}))


if __name__ == "__main__":
    main()
