"""Command-line options of ``dualanodiff train`` (kept apart from the training loop, testable)."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .. import checks
from .data import FLIP_RULES, RESAMPLING, SPLITS
from ..errors import DualAnoDiffError
from ..options import from_namespace, use_defaults_of

# Settings a resumable checkpoint was taken with; resuming with others would train a different model.
RESUME_SETTINGS = ("mvtec", "defect", "split", "images", "masks", "base_model", "rank", "no_text_encoder_lora",
                   "no_saim", "bcm", "object_masks", "prompt_global", "prompt_anomaly", "lr", "weight_decay",
                   "max_grad_norm", "pairs_per_step", "resolution", "flip", "resample", "batches", "seed",
                   "mixed_precision")
BATCHES = ("random", "epoch")


@dataclass(kw_only=True)
class TrainConfig:
    """Everything ``dualanodiff train`` takes (the flags of the same names); built by :func:`parse_args`
    or directly. ``pairs_per_step`` None means 4, or 2 with ``bcm`` (:func:`resolve_defaults`)."""

    base_model: Path
    output_dir: Path
    # data: an MVTec AD category and defect type, or two folders
    mvtec: Path | None = None
    defect: str | None = None
    split: str | int = "floor"
    images: Path | None = None
    masks: Path | None = None
    # base model
    tokenizer: Path | None = None
    comfyui: Path | None = None
    model_config: Path | None = None
    # what is trained
    rank: int = 32
    no_text_encoder_lora: bool = False
    no_saim: bool = False
    bcm: bool = False
    u2net: Path | None = None
    object_masks: Path | None = None
    prompt_global: str = "a vfx with sks"
    prompt_anomaly: str = "sks"
    # optimisation
    steps: int = 5000
    lr: float = 2e-5
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    pairs_per_step: int | None = None
    resolution: int = 512
    flip: str = "reference"
    resample: str = "bilinear"
    batches: str = "random"
    seed: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    cpu: bool = False
    # output, checkpoints, validation, logging
    name: str | None = None
    checkpoint_every: int = 500
    checkpoints_keep: int = 2
    resume: str | None = None
    overwrite: bool = False
    validate_every: int = 500
    validation_pairs: int = 2
    validation_steps: int = 25
    report_to: str = "none"
    log_every: int = 10
    save_dtype: str = "fp16"


def _split(value: str):
    if value in SPLITS or value.isdigit():
        return int(value) if value.isdigit() else value
    raise argparse.ArgumentTypeError(f"--split must be one of {', '.join(SPLITS)} or a number of shots, not {value!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data (an MVTec AD category, or two folders)")
    data.add_argument("--mvtec", type=Path, help="MVTec AD category folder, e.g. mvtec/bottle (uses test/<defect> "
                      "and ground_truth/<defect>)")
    data.add_argument("--defect", help="defect type inside the MVTec category, e.g. broken_large")
    data.add_argument("--split", type=_split, default="floor", help="MVTec few-shot split: 'floor' = first L//3 "
                      "sorted images (default, disjoint from the evaluation split), 'reference' = the paper code's "
                      "rounding (overlaps evaluation), or a number of shots")
    data.add_argument("--images", type=Path, help="folder of defect images (instead of --mvtec)")
    data.add_argument("--masks", type=Path, help="folder of defect masks matched to --images by name "
                      "(x.png or x_mask.png)")
    base = p.add_argument_group("base model (offline)")
    base.add_argument("--base-model", type=Path, required=True, help="SD 1.5 diffusers folder, or a single-file "
                      "checkpoint (.safetensors/.ckpt) as ComfyUI keeps them")
    base.add_argument("--tokenizer", type=Path, help="folder with CLIP vocab.json + merges.txt (default: the "
                      "model folder's tokenizer/, or ComfyUI's comfy/sd1_tokenizer)")
    base.add_argument("--comfyui", type=Path, help="a ComfyUI install to take the tokenizer from")
    base.add_argument("--model-config", type=Path, help="diffusers-format config folder for single-file "
                      "checkpoints (default: the bundled SD 1.5 configs)")
    what = p.add_argument_group("what is trained")
    what.add_argument("--rank", type=int, default=32, help="LoRA rank of both branches and the text encoder (default: 32)")
    what.add_argument("--no-text-encoder-lora", action="store_true", help="do not train the shared text-encoder LoRA")
    what.add_argument("--no-saim", action="store_true", help="ablation: train without SAIM, the two branches only "
                      "share timestep and prompts (the demo's comparison; not the method)")
    what.add_argument("--bcm", action="store_true", help="also train the background compensation module")
    what.add_argument("--u2net", type=Path, help="u2net.pth or u2netp.pth to cut the object out for BCM backgrounds")
    what.add_argument("--object-masks", type=Path, help="folder of object masks (named like the images) for BCM "
                      "backgrounds, instead of --u2net")
    what.add_argument("--prompt-global", default="a vfx with sks", help="global-branch prompt (default: %(default)r)")
    what.add_argument("--prompt-anomaly", default="sks", help="anomaly-branch prompt (default: %(default)r)")
    opt = p.add_argument_group("optimisation (defaults follow the reference)")
    opt.add_argument("--steps", type=int, default=5000, help="training steps (default: 5000)")
    opt.add_argument("--lr", type=float, default=2e-5, help="AdamW learning rate, constant (default: 2e-5)")
    opt.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay (default: 0.01)")
    opt.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (default: 1.0)")
    opt.add_argument("--pairs-per-step", type=int, default=None, help="pairs per step and process (default: 4, or 2 with --bcm)")
    opt.add_argument("--resolution", type=int, default=512, help="training resolution in pixels (default: 512)")
    opt.add_argument("--flip", choices=tuple(FLIP_RULES), default="reference", help="shared random horizontal/vertical "
                     "flips by category: reference = all categories but cable (the reference's rule, default), "
                     "orientation = also not metal_nut and transistor (their flip/misplaced defects are orientations), "
                     "hv = always, none = never; folder data (--images) flips unless none")
    opt.add_argument("--no-flip", dest="flip", action="store_const", const="none", help="the same as --flip none")
    opt.add_argument("--resample", choices=RESAMPLING, default="bilinear", help="resizing to --resolution: bilinear "
                     "image and mask, mask kept where >= 0.5 (the reference's, default), or bicubic image and "
                     "nearest-neighbour mask")
    opt.add_argument("--batches", choices=BATCHES, default="random", help="how pairs are drawn: random = each step "
                     "draws --pairs-per-step pairs with replacement (default), epoch = shuffled passes over the pairs "
                     "in steps of --pairs-per-step, the last step of a pass taking what is left (the reference's "
                     "DataLoader)")
    opt.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same run (default: 0)")
    opt.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                     help="frozen weights and activations in fp16/bf16, trained weights in fp32 (default: no)")
    opt.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    opt.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    out = p.add_argument_group("output, checkpoints, validation, logging")
    out.add_argument("--output-dir", type=Path, required=True, help="folder for the checkpoint, configuration, "
                     "resumable checkpoints and validation grids")
    out.add_argument("--name", help="checkpoint file name stem (default: <category>_<defect> or the images folder name)")
    out.add_argument("--checkpoint-every", type=int, default=500, help="write a resumable checkpoint every N steps (default: 500)")
    out.add_argument("--checkpoints-keep", type=int, default=2, help="how many resumable checkpoints to keep (default: 2)")
    out.add_argument("--resume", help="'latest' or a checkpoint folder under OUTPUT_DIR/checkpoints to continue from "
                     "(refused when its settings differ from this run's; --steps may grow)")
    out.add_argument("--overwrite", action="store_true", help="start over in an OUTPUT_DIR that already holds this "
                     "run's final checkpoint or resumable checkpoints (they are replaced)")
    out.add_argument("--validate-every", type=int, default=500, help="write a validation grid (global | anomaly | mask) "
                     "every N steps, 0 to disable (default: 500)")
    out.add_argument("--validation-pairs", type=int, default=2, help="pairs in each validation grid (default: 2)")
    out.add_argument("--validation-steps", type=int, default=25, help="DDIM steps for validation samples (default: 25)")
    out.add_argument("--report-to", default="none", help="accelerate trackers for metrics: none, tensorboard, "
                     "wandb, all, ... (default: none)")
    out.add_argument("--log-every", type=int, default=10, help="log loss to the trackers every N steps (default: 10)")
    out.add_argument("--save-dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="checkpoint precision (default: fp16)")
    use_defaults_of(p, TrainConfig)


def resolve_defaults(config: TrainConfig) -> TrainConfig:
    """Fill the defaults that depend on other options (a copy; ``config`` is not changed)."""
    if config.pairs_per_step is None:
        return dataclasses.replace(config, pairs_per_step=2 if config.bcm else 4)
    return config


def check_arguments(args) -> None:
    """Every rule on the options alone (no file is read); raises DualAnoDiffError, changes nothing."""
    if (args.mvtec is None) == (args.images is None):
        raise DualAnoDiffError("give either --mvtec CATEGORY --defect NAME, or --images DIR --masks DIR")
    if args.mvtec is not None and not args.defect:
        raise DualAnoDiffError("--mvtec needs --defect (one model per category and defect type)")
    if args.images is not None and args.masks is None:
        raise DualAnoDiffError("--images needs --masks")
    if args.bcm and not (args.u2net or args.object_masks):
        raise DualAnoDiffError("--bcm needs --u2net FILE or --object-masks DIR to cut the object out of the backgrounds")
    if (args.u2net or args.object_masks) and not args.bcm:
        raise DualAnoDiffError("--u2net/--object-masks only serve --bcm (the background module); add --bcm or drop them")
    check_numbers(args)
    if args.name is not None:
        checks.folder_name(args.name, "--name")
    for flag in ("mvtec", "images", "masks", "object_masks", "tokenizer", "comfyui", "model_config"):
        if getattr(args, flag) is not None:
            checks.input_dir(getattr(args, flag), f"--{flag.replace('_', '-')}")
    if args.u2net is not None:
        checks.input_file(args.u2net, "--u2net")
    checks.output_dir(args.output_dir, "--output-dir")


def check_numbers(args) -> None:
    """The rules on the numeric options (also the ComfyUI Train node's)."""
    for flag in ("steps", "rank", "pairs_per_step", "validation_pairs", "validation_steps", "log_every"):
        if getattr(args, flag) is not None:
            checks.at_least(getattr(args, flag), 1, f"--{flag.replace('_', '-')}")
    for flag in ("weight_decay", "max_grad_norm", "checkpoint_every", "checkpoints_keep", "validate_every"):
        checks.at_least(checks.finite(getattr(args, flag), f"--{flag.replace('_', '-')}"), 0,
                        f"--{flag.replace('_', '-')}")
    checks.finite(args.lr, "--lr")
    if args.lr <= 0:
        raise DualAnoDiffError(f"--lr must be above 0, got {args.lr}")
    checks.resolution(args.resolution)


def parse_args(argv=None) -> TrainConfig:
    """The configuration of a ``dualanodiff train`` command line (checked, defaults filled)."""
    from ..cli import ArgumentParser

    p = ArgumentParser(prog="dualanodiff train")
    add_arguments(p)
    config = from_namespace(TrainConfig, p.parse_args(argv))
    try:
        check_arguments(config)
    except DualAnoDiffError as exc:
        p.error(str(exc))
    return resolve_defaults(config)
