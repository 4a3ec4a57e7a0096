"""``dualanodiff demo``: the whole method end to end on the demo world, with the shipped tiny base model.

Few-shot training on a handful of defect pairs of :mod:`demo_world` (``dualanodiff train``'s code
path, once with SAIM and once without as an ablation), generation of N pairs (``dualanodiff
generate``'s code path, threshold masks), then metrics and a contact sheet.

Metrics, per trained model, over the N generated pairs (global image G_i, extracted mask M_i of the
anomaly image, D_i = :func:`demo_world.defect_pixels` of G_i, the defect the world finds by colour):

- ``alignment_iou``: mean of IoU(M_i, D_i) over the pairs where M_i or D_i is non-empty; a pair with
  a defect on one side only scores 0, pairs empty on both sides are left out (they count against
  ``nonempty_mask_share`` instead). 0 when no pair qualifies.
- ``nonempty_mask_share``: share of pairs whose extracted mask is non-empty.
- ``global_defect_share``: share of pairs whose global image shows defect pixels.
- ``defect_area_ratio``: mean defect area of the global images (D_i) over the mean area of the
  few-shot training masks: 1 when generated defects are as large as the training defects.
- ``stray_defect_colour``: share of all defect-colour pixels of the global images (D_i pooled) that lie
  outside their extracted masks M_i: defect colour smeared where the mask does not say "defect".
- ``diversity``: mean over all pairs i < j of non-empty masks of 1 - IoU(M_i, M_j): 0 when every
  generated defect sits in the same place with the same shape, 1 when no two overlap at all (the
  training masks' own value is reported as ``diversity_of_training_masks`` for scale). None with
  fewer than two non-empty masks.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import world as demo_world
from ..errors import DualAnoDiffError
from ..io_utils import atomic_write

DEMO_MODEL = Path(__file__).resolve().parent / "model"
PROMPT_GLOBAL, PROMPT_ANOMALY = "a photo of an object with sks", "sks"
VARIANTS = ("saim", "no_saim")


@dataclass
class DemoConfig:
    out: Path = Path("dualanodiff-demo")
    base_model: Path = DEMO_MODEL
    defect: str = "scratch"
    shots: int = 8
    pairs: int = 64
    ablation_pairs: int = 16  # the ablation's masks align at about 0.04 IoU: 16 pairs measure that to +-0.02
    steps: int = 600          # training steps per model
    rank: int = 16
    lr: float = 1e-3          # the reference's 2e-5 is meant for 5000 steps on SD 1.5
    pairs_per_step: int = 4
    batches: str = "epoch"    # every shot once per pass (train's --batches): five seeds in docs/demo.md
    sample_steps: int = 15
    scheduler: str = "euler-a"  # a name of runtime.sampling.SCHEDULERS, as generate's --scheduler
    guidance: float = 2.5
    mask_threshold: float = 0.2  # the tiny model's grey canvas is noisier than SD 1.5's (generate's default 0.1)
    batch_size: int = 32
    seed: int = 0
    ablation: bool = True
    evaluate: bool = False    # train a detector on each set and the two baselines (dualanodiff evaluate)
    place: bool = False       # also put the SAIM model's defects on normal world images (generate --on-images)
    cpu: bool = False


def write_few_shot(folder: Path, defect: str, shots: int, seed: int) -> tuple:
    """``folder/images/<i>.png`` and ``folder/masks/<i>.png`` from the world; returns both folders and
    the world samples."""
    from PIL import Image

    images, masks = folder / "images", folder / "masks"
    shutil.rmtree(folder, ignore_errors=True)
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    world = demo_world.samples(shots, seed=1000 + seed, defect=defect)
    for i, s in enumerate(world):
        Image.fromarray((s.image * 255 + 0.5).astype(np.uint8)).save(images / f"{i:03d}.png")
        Image.fromarray(s.mask.astype(np.uint8) * 255).save(masks / f"{i:03d}.png")
    return images, masks, world


def _train(cfg: DemoConfig, images: Path, masks: Path, out: Path, saim: bool, progress=None) -> Path:
    from ..training.train_args import TrainConfig
    from ..training.trainer import train

    return train(TrainConfig(
        images=images, masks=masks, base_model=cfg.base_model, output_dir=out,
        name="demo_" + ("saim" if saim else "no_saim"), resolution=64, rank=cfg.rank, lr=cfg.lr, steps=cfg.steps,
        pairs_per_step=cfg.pairs_per_step, seed=cfg.seed, prompt_global=PROMPT_GLOBAL, prompt_anomaly=PROMPT_ANOMALY,
        checkpoint_every=0, validate_every=0, save_dtype="fp32", overwrite=True, no_saim=not saim, cpu=cfg.cpu,
        batches=cfg.batches),
        progress=progress)


def variant_pairs(cfg: DemoConfig, variant: str) -> int:
    """Pairs ``variant`` draws: DualAnoDiff ``cfg.pairs``; the ablation enough to measure how badly its masks
    align (``cfg.ablation_pairs``), or as many as DualAnoDiff where ``--evaluate`` trains a detector on them."""
    if variant == "saim" or cfg.evaluate:
        return cfg.pairs
    return min(cfg.pairs, cfg.ablation_pairs)


def _generate(cfg: DemoConfig, checkpoint: Path, out: Path, pairs: int, progress=None) -> Path:
    from ..generation.generate import GenerateConfig, generate

    shutil.rmtree(out, ignore_errors=True)  # samples of an earlier run came from another checkpoint
    return generate(GenerateConfig(
        base_model=cfg.base_model, checkpoint=checkpoint, output_dir=out, object="world", defect=cfg.defect,
        num_pairs=pairs, batch_size=cfg.batch_size, scheduler=cfg.scheduler, steps=cfg.sample_steps,
        guidance=cfg.guidance, seed=cfg.seed, resolution=64, mask_threshold=cfg.mask_threshold, dtype="fp32",
        cpu=cfg.cpu), progress=progress)


def read_samples(root: Path, n: int) -> dict:
    """Global images (n, H, W, 3) in [0, 1], anomaly images, and masks (n, H, W) bool."""
    from PIL import Image

    def load(kind, i, mode):
        with Image.open(root / kind / f"{i}.png") as im:
            return np.asarray(im.convert(mode), np.float32) / 255

    return {"image": np.stack([load("image", i, "RGB") for i in range(n)]),
            "fg": np.stack([load("fg", i, "RGB") for i in range(n)]),
            "mask": np.stack([load("mask", i, "L") for i in range(n)]) > 0.5}


def diversity(masks) -> float | None:
    masks = [m for m in masks if m.any()]
    if len(masks) < 2:
        return None
    d = [1 - demo_world.iou(a, b) for i, a in enumerate(masks) for b in masks[i + 1:]]
    return float(np.mean(d))


def metrics(samples: dict, training_masks=None) -> dict:
    """The module docstring's metrics for one model's samples (``training_masks``: the few-shot
    masks, for the defect area ratio)."""
    from .stages import defect_area_ratio, stray_defect_colour

    masks, found = samples["mask"], demo_world.defect_pixels(samples["image"])
    scored = [demo_world.iou(m, d) for m, d in zip(masks, found) if m.any() or d.any()]
    out = {
        "alignment_iou": round(float(np.mean(scored)) if scored else 0.0, 4),
        "nonempty_mask_share": round(float(np.mean([m.any() for m in masks])), 4),
        "global_defect_share": round(float(np.mean([d.any() for d in found])), 4),
        "diversity": None if (v := diversity(masks)) is None else round(v, 4),
        "stray_defect_colour": round(stray_defect_colour(samples["image"], masks), 4),
    }
    if training_masks is not None:
        out["defect_area_ratio"] = round(defect_area_ratio(samples["image"], training_masks), 4)
    return {**out, "pairs": len(masks)}


def _overlay(image: np.ndarray, mask: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """The global image with the extracted mask tinted green (the world's defects are magenta) and, for
    placed pairs, the region's edge in yellow."""
    tint = np.array([0.1, 0.95, 0.2], np.float32)
    out = np.where(mask[..., None], 0.45 * image + 0.55 * tint, image)
    if region is not None:
        inner = region.copy()
        inner[1:-1, 1:-1] = region[:-2, 1:-1] & region[2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:] & region[1:-1, 1:-1]
        out = np.where((region & ~inner)[..., None], np.array([1.0, 0.9, 0.1], np.float32), out)
    return out


def contact_sheet(results: dict, path: Path, rows: int = 8, scale: int = 2) -> Path:
    """Per variant a block of ``rows`` pairs: global | anomaly | mask | overlay, variants side by side
    (the first block can be the training pairs, for comparison)."""
    from PIL import Image, ImageDraw

    blocks = []
    n = min(rows, *(len(s["image"]) for s in results.values()))  # blocks side by side need one height
    for name, s in results.items():
        lines = [np.concatenate([s["image"][i], s["fg"][i], np.repeat(s["mask"][i][..., None], 3, -1).astype(np.float32),
                                 _overlay(s["image"][i], s["mask"][i], s["region"][i] if "region" in s else None)],
                                axis=1) for i in range(n)]
        blocks.append((name, np.concatenate(lines, axis=0)))
    gap = np.ones((blocks[0][1].shape[0], 8, 3), np.float32)
    sheet = np.concatenate([x for _, b in blocks for x in (b, gap)][:-1], axis=1)
    img = Image.fromarray((sheet * 255 + 0.5).astype(np.uint8))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    header = Image.new("RGB", (img.width, 16), "white")
    draw = ImageDraw.Draw(header)
    tile = 64 * scale
    x = 0
    for name, b in blocks:
        for j, col in enumerate(("global", "anomaly", "mask", "overlay")):
            draw.text((x + j * tile + 4, 2), col if j else f"{col} [{name}]", fill="black")
        x += b.shape[1] * scale + 8 * scale
    full = Image.new("RGB", (img.width, img.height + 16), "white")
    full.paste(header, (0, 0))
    full.paste(img, (0, 16))
    return atomic_write(path, lambda tmp: full.save(tmp, format="PNG"), overwrite=True)


# demo --evaluate: one detector per set and seed; 8 seeds, because one detector's pixel AP moves by several
# points from seed to seed at the demo's size
EVAL_SEEDS = tuple(range(8))


def _downstream(cfg: DemoConfig, out: Path) -> dict:
    """Mean and spread over 8 detector seeds of a detector trained on each generated set (the placed one
    included), on the two baselines, and on the few real shots with each set but the ablation added,
    scored on a held-out toy test set (``dualanodiff evaluate --mix-real``'s code, demo-sized)."""
    from ..evaluation.cli_args import MIX_REAL
    from ..evaluation.demo_world_eval import DemoEvalConfig, evaluate_demo_world
    from ..evaluation.report import user_table

    variants = (("DualAnoDiff", "saim"), ("no-SAIM", "no_saim"), ("placed", "placed"))
    sets = {name: out / "samples" / variant / "world" / cfg.defect for name, variant in variants
            if variant != "no_saim" or cfg.ablation}  # (an earlier run's folders may be there too)
    result = evaluate_demo_world(sets, out / "evaluation", DemoEvalConfig(
        defect=cfg.defect, shots=cfg.shots, seed=cfg.seed, cpu=cfg.cpu, seeds=EVAL_SEEDS, mix_real=MIX_REAL,
        unmixed=("no-SAIM",)))
    print(user_table(result), file=sys.stderr)
    return {name: {"kind": s["kind"], "mean": s["mean"], "std": s["std"]} for name, s in result["sets"].items()}


def check_config(cfg: DemoConfig) -> None:
    """Every rule on the configuration, before anything is trained or written."""
    from .. import checks
    from ..formats.base_model import check_base_model

    for name in ("shots", "pairs", "ablation_pairs", "steps", "rank", "sample_steps", "pairs_per_step", "batch_size"):
        checks.at_least(getattr(cfg, name), 1, f"--{name.replace('_', '-')}")
    checks.between(cfg.mask_threshold, 0, 1, "--mask-threshold")
    checks.finite(cfg.guidance, "--guidance")
    if not cfg.lr > 0:
        raise DualAnoDiffError(f"--lr must be above 0, got {cfg.lr}")
    if cfg.defect not in demo_world.DEFECTS:
        raise DualAnoDiffError(f"--defect {cfg.defect!r}: choose one of {', '.join(demo_world.DEFECTS)}")
    from ..runtime.sampling import SCHEDULERS
    from ..training.train_args import BATCHES

    if cfg.batches not in BATCHES:
        raise DualAnoDiffError(f"--batches {cfg.batches!r}: choose one of {', '.join(BATCHES)}")
    if cfg.scheduler not in SCHEDULERS:
        raise DualAnoDiffError(f"--scheduler {cfg.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    checks.output_dir(cfg.out, "--out")
    check_base_model(cfg.base_model)


def run(cfg: DemoConfig, narrator=None) -> dict:
    """Train, generate, measure; writes everything under ``cfg.out`` and returns the metrics. ``narrator``:
    a :class:`~.narration.Narrator` telling what happens (on stderr by default); its ``finish`` is the
    caller's, after the metrics."""
    from accelerate import PartialState

    from .narration import Narrator
    from .variants import run_variants

    check_config(cfg)
    say = narrator or Narrator()
    began = time.perf_counter()
    out = Path(cfg.out)
    variants = VARIANTS if cfg.ablation else VARIANTS[:1]
    stages = 4 + bool(cfg.place or cfg.evaluate) + bool(cfg.evaluate)
    plural = {"scratch": "scratches"}.get(cfg.defect, cfg.defect + "s")
    say.say(f"DualAnoDiff demo: learns to draw {plural} from {cfg.shots} example images with their masks, in a toy "
            "world of 64 px objects, on this computer's CPU; then draws new defect images, each with its mask.")
    images, masks, world = write_few_shot(out / "few_shot", cfg.defect, cfg.shots, cfg.seed)
    say.stage(1, stages, f"{cfg.shots} real training pairs (image + defect mask) written to {out / 'few_shot'}")
    training = [s.mask for s in world]
    shots = {"image": np.stack([s.image for s in world]), "mask": np.stack(training)}
    shots["fg"] = np.where(shots["mask"][..., None], shots["image"], 0.5).astype(np.float32)  # the anomaly branch's target
    if len(variants) > 1:
        what = (f"Training two models side by side ({cfg.steps} steps each): DualAnoDiff, whose two branches (the "
                "whole object, the defect alone) see each other through SAIM, and for comparison the same model "
                f"without SAIM. Then DualAnoDiff draws {cfg.pairs} new pairs and the comparison {variant_pairs(cfg, 'no_saim')}.")
    else:
        what = (f"Training DualAnoDiff ({cfg.steps} steps): two branches, one drawing the whole object and one the "
                f"defect alone, that see each other through SAIM. Then it draws {cfg.pairs} new pairs.")
    say.stage(2, stages, what)
    shown = set()

    def display(variant, stage, done, total):
        if stage == "generate" and "generate" not in shown:
            shown.add("generate")
            say.stage(3, stages, f"Drawing {cfg.pairs} new defect images, each with its mask"
                                 + (f" ({variant_pairs(cfg, 'no_saim')} with the comparison)" if len(variants) > 1 else ""))
        say.progress(variant, stage, done, total)

    done = run_variants(cfg, variants, images, masks, out, display)
    results, report = {}, {}
    for variant in variants:
        r = done[variant]
        results[variant] = read_samples(r.samples, variant_pairs(cfg, variant))
        report[variant] = {**metrics(results[variant], training), "checkpoint": str(r.checkpoint),
                           "setup_seconds": r.setup_seconds, "train_seconds": r.train_seconds,
                           "generate_seconds": r.generate_seconds}
    number = 4
    if cfg.place or cfg.evaluate:
        from .placement_stage import run_placement

        say.stage(number, stages, "Putting DualAnoDiff's defects on normal objects of the world (generate --on-images)")
        number += 1
        t3 = time.perf_counter()
        placed, report["placed"] = run_placement(cfg, done["saim"].checkpoint, masks, training, out)
        report["placed"]["generate_seconds"] = round(time.perf_counter() - t3, 1)
        results["placed"] = {k: placed[k] for k in ("image", "fg", "mask", "region")}
    if cfg.evaluate:
        say.stage(number, stages, "Training a defect detector on each set of images and scoring it on held-out images "
                                  "(8 seeds each)")
        number += 1
        report["downstream"] = _downstream(cfg, out)
    say.stage(number, stages, "Measuring the pairs and drawing the contact sheet")
    t4 = time.perf_counter()
    placed = {"placed": results.pop("placed")} if "placed" in results else {}
    sheet = contact_sheet({"training": shots, **results, **placed}, out / "contact_sheet.png")
    device = PartialState().device.type  # what the trainer and generator ran on
    summary = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
               "device": device, **report, "diversity_of_training_masks": diversity(training),
               "contact_sheet": str(sheet), "sheet_seconds": round(time.perf_counter() - t4, 1),
               "seconds": round(time.perf_counter() - began, 1)}
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1), encoding="utf-8"),
                 overwrite=True)
    return summary
