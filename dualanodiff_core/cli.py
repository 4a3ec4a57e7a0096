"""The ``dualanodiff`` command line. Each subcommand keeps ``add_arguments`` and ``run`` apart."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runtime.dtypes import NAMES as DTYPES, torch_dtype as _torch_dtype
from .errors import DualAnoDiffError


class ArgumentParser(argparse.ArgumentParser):
    """Usage mistakes print one line and where to look, not the whole usage block. Options are written out in
    full: an abbreviation (``--epoch``) is refused, not silently taken for another option (``--epochs``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # subcommand parsers are made by this class too
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\nRun '{self.prog} --help' for the options.\n")


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="import a checkpoint saved by the paper's reference code into one DualAnoDiff file",
        description="Convert the reference implementation's pytorch_lora_weights.safetensors or .bin "
        "(plain or BCM variant, optional text-encoder LoRA) into a DualAnoDiff checkpoint. Pickle .bin "
        "files are read with torch.load(weights_only=True): anything but plain tensors is refused.",
    )
    p.add_argument("input", type=Path, help="reference checkpoint: pytorch_lora_weights.safetensors or .bin")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="output .safetensors (default: <input folder>/<input folder name>.dualanodiff.safetensors)")
    p.add_argument("--dtype", choices=DTYPES, default="fp16", help="storage precision of the output (default: fp16)")
    p.add_argument("--prompt-global", default="a vfx with sks",
                   help="global-branch prompt the model was trained with, stored in the file (default: %(default)r)")
    p.add_argument("--prompt-anomaly", default="sks",
                   help="anomaly-branch prompt the model was trained with (default: %(default)r)")
    p.add_argument("--prompt-negative", default="", help="negative prompt for both branches (default: empty)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from . import checks
    from .formats.checkpoint import save_checkpoint
    from .formats.reference_import import convert_reference

    prompts = {"global": args.prompt_global, "anomaly": args.prompt_anomaly, "negative": args.prompt_negative}
    checks.input_file(args.input, "reference checkpoint", (".safetensors", ".bin"))
    output = args.output or args.input.parent / f"{args.input.resolve().parent.name}.dualanodiff.safetensors"
    checks.output_file(output, "--output", args.overwrite)
    ckpt = convert_reference(args.input, prompts=prompts)
    save_checkpoint(output, ckpt, dtype=_torch_dtype(args.dtype))
    print(f"wrote {output} (components: {', '.join(ckpt.components)}; rank {ckpt.rank}; "
          f"{len(ckpt.attention_paths())} attention modules)")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export-lora",
        help="write each branch's LoRA (and the text-encoder LoRA) as ordinary kohya LoRA files",
        description="Export a DualAnoDiff checkpoint's global and anomaly UNet LoRAs and its shared "
        "text-encoder LoRA as kohya-format .safetensors files that ComfyUI's LoraLoader reads. SAIM and "
        "BCM cannot be expressed as an ordinary LoRA and are left out.",
    )
    p.add_argument("checkpoint", type=Path, help="DualAnoDiff checkpoint (.safetensors), or a reference "
                   "pytorch_lora_weights.* file (converted on the fly)")
    p.add_argument("--output-dir", type=Path, default=None, help="folder for the LoRA files (default: the checkpoint's folder)")
    p.add_argument("--name", default=None, help="file name stem; files are <name>_global/_anomaly/_text_encoder."
                   "safetensors (default: the checkpoint's stem)")
    p.add_argument("--parts", nargs="+", choices=("global", "anomaly", "text_encoder"),
                   default=["global", "anomaly", "text_encoder"], help="which LoRAs to write (default: all)")
    p.add_argument("--dtype", choices=DTYPES, default="fp16", help="storage precision (default: fp16)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(run=run_export)


def run_export(args) -> int:
    from . import checks
    from .formats.checkpoint import open_checkpoint
    from .formats.kohya_export import export_loras

    checks.input_file(args.checkpoint, "checkpoint", (".safetensors", ".bin"))
    name = checks.folder_name(args.name or args.checkpoint.name.split(".")[0], "--name")
    checks.output_dir(args.output_dir or args.checkpoint.parent, "--output-dir")
    ckpt = open_checkpoint(args.checkpoint)
    written = export_loras(ckpt, args.output_dir or args.checkpoint.parent, name, parts=args.parts,
                           dtype=_torch_dtype(args.dtype), overwrite=args.overwrite)
    for path in written:
        print(f"wrote {path}")
    return 0


def _add_export_dataset(sub) -> None:
    from .export import command

    p = sub.add_parser(
        "export-dataset",
        help="write a generated dataset as COCO instance segmentation and/or YOLO segmentation (no regeneration)",
        description="Export the samples of a dataset written by generate or the Save Dataset node (pairs or mvtec "
        "layout, as its manifest.jsonl lists them) as COCO instance segmentation (one annotation per connected "
        "defect region, RLE masks, the defect type as category) and/or YOLO segmentation (one polygon per region, "
        "data.yaml), with a seeded train/val split. Exports into an existing export extend it. Formats: "
        "docs/datasets.md.",
    )
    command.add_arguments(p)
    p.set_defaults(run=run_export_dataset)


def run_export_dataset(args) -> int:
    from .export import command

    return command.run(args)


def _add_train(sub) -> None:
    from .training import train_args

    p = sub.add_parser(
        "train",
        help="few-shot dual-branch training on a handful of defect images and masks",
        description="Train both UNet branch LoRAs, SAIM, the shared text-encoder LoRA and optionally BCM on a "
        "few defect image/mask pairs (an MVTec AD category or two folders). Defaults follow the reference. "
        "For several GPUs or machines run it through accelerate: "
        "`accelerate launch -m dualanodiff_core.cli train ...`.",
    )
    train_args.add_arguments(p)
    p.set_defaults(run=run_train)


def run_train(args) -> int:
    from .options import from_namespace
    from .training.train_args import TrainConfig
    from .training.trainer import train

    path = train(from_namespace(TrainConfig, args))
    if path is not None:
        print(f"wrote {path}")
    return 0


def _add_generate(sub) -> None:
    from .generation import generate

    p = sub.add_parser(
        "generate",
        help="generate a dataset of image/mask pairs from a base model and a DualAnoDiff checkpoint",
        description="Generate N (image, anomaly part, mask) triples into OUT/<object>/<defect>/{image,fg,mask}/ "
        "with a manifest.jsonl; resumable (finished samples are skipped, never overwritten); several GPUs "
        "with `accelerate launch -m dualanodiff_core.cli generate ...`.",
    )
    generate.add_arguments(p)
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from .generation.generate import GenerateConfig, generate
    from .options import from_namespace

    root = generate(from_namespace(GenerateConfig, args))
    print(f"wrote samples under {root}")
    return 0


def _add_demo(sub) -> None:
    from .demo import world as demo_world
    from .runtime.sampling import SCHEDULERS
    from .demo.run import DemoConfig
    from .training.train_args import BATCHES

    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="the whole method in minutes on CPU: a toy defect world and a shipped tiny base model",
        description="Few-shot training on defect pairs of the built-in toy world on the shipped tiny base model, "
        "and of a second model without SAIM as the ablation (side by side, in two processes), generation of "
        "image/mask pairs, and metrics: a "
        "JSON object on stdout (what it is doing, and how long is left, on stderr), contact_sheet.png, checkpoints, "
        "samples and metrics.json under --out. Uses the GPU when there is one; on a CPU, as many threads as other "
        "processes leave cores free (DUALANODIFF_THREADS=N sets it).",
    )
    p.add_argument("--out", type=Path, default=d.out, help="output folder (default: ./%(default)s)")
    p.add_argument("--defect", choices=demo_world.DEFECTS, default=d.defect, help="defect type (default: %(default)s)")
    p.add_argument("--shots", type=int, default=d.shots, help="training pairs (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=d.pairs, help="pairs the DualAnoDiff model generates (default: %(default)s)")
    p.add_argument("--ablation-pairs", type=int, default=d.ablation_pairs, help="pairs the model without SAIM generates, "
                   "at most --pairs: enough to measure how badly its masks align (default: %(default)s; with --evaluate "
                   "it generates --pairs, as its detector trains on them)")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps per model (default: %(default)s)")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default: %(default)s; the reference's "
                   "2e-5 needs thousands of steps)")
    p.add_argument("--batches", choices=BATCHES, default=d.batches, help="how each step's pairs are drawn, as "
                   "train's --batches: epoch = every shot once per pass, random = with replacement (default: %(default)s, "
                   "measured over five seeds in docs/demo.md)")
    p.add_argument("--sample-steps", type=int, default=d.sample_steps, help="sampling steps (default: %(default)s)")
    p.add_argument("--scheduler", choices=tuple(SCHEDULERS), default=d.scheduler, help="sampler of both generation "
                   "stages, as generate's --scheduler (default: %(default)s, Euler ancestral: measured against DDIM in "
                   "docs/demo.md)")
    p.add_argument("--guidance", type=float, default=d.guidance, help="classifier-free guidance of the plain demo (default: %(default)s; the --place stage uses 2.5, measured in docs/demo.md)")
    p.add_argument("--mask-threshold", type=float, default=d.mask_threshold, help="grey-distance threshold of the "
                   "masks cut out of the anomaly images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    p.add_argument("--base-model", type=Path, default=d.base_model, help="base model folder (default: the shipped "
                   "tiny model trained on the toy world)")
    p.add_argument("--no-ablation", action="store_true", help="skip the model trained without SAIM (the comparison, "
                   "trained beside the DualAnoDiff model in a process of its own)")
    p.add_argument("--evaluate", action="store_true", help="also run the --place stage, then answer 'do generated "
                   "pairs help my few real defects?' as `dualanodiff evaluate --mix-real` does: a small detector, 8 "
                   "seeds each, trained on each generated set (placed included), on the two baselines (real-only, "
                   "crop-and-paste) and on the few real shots with each set added, scored on a held-out toy test set; "
                   "prints the table and writes evaluation/report.md (about 10 minutes more on 2 CPU cores)")
    p.add_argument("--place", action="store_true", help="also put the SAIM model's defects on normal images of the "
                   "world (generate --on-images --region auto) and report how much stays inside the regions and "
                   "whether anything outside them changed (a few seconds more)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    p.set_defaults(run=run_demo)


def run_demo(args) -> int:
    import json

    from .demo.narration import Narrator
    from .demo.run import DemoConfig, run

    cfg = DemoConfig(out=args.out, base_model=args.base_model, defect=args.defect, shots=args.shots, pairs=args.pairs,
                     ablation_pairs=args.ablation_pairs, batches=args.batches,
                     steps=args.steps, rank=args.rank, lr=args.lr, sample_steps=args.sample_steps, scheduler=args.scheduler,
                     guidance=args.guidance, mask_threshold=args.mask_threshold, seed=args.seed, ablation=not args.no_ablation,
                     evaluate=args.evaluate,
                     place=args.place, cpu=args.cpu)
    say = Narrator()
    summary = run(cfg, say)
    print(json.dumps(summary, indent=1), flush=True)
    say.finish(summary["seconds"], summary["contact_sheet"], str(Path(cfg.out) / "metrics.json"), summary)
    return 0


def _add_evaluate(sub) -> None:
    from .evaluation import cli_args

    p = sub.add_parser(
        "evaluate",
        help="does the generated data help a detector? train and score one per set, beside two baselines",
        description="The paper's downstream protocol on your data: a DRAEM-style U-Net detector is trained on each "
        "synthetic set (from generate or the Save Dataset node) and on two baselines (the few real shots alone, and "
        "crop-and-paste of them), then scored on the real test images that are not few shots: pixel AUROC/AP/F1-max, "
        "AU-PRO, image AUROC/AP/F1-max, optionally IC-LPIPS and IS. Writes metrics.json, report.md, curves.png, "
        "predictions.png; resumable.",
    )
    cli_args.add_arguments(p)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> int:
    from .evaluation import cli_args

    return cli_args.run(args)


def _add_reproduce(sub) -> None:
    from .reproduce import cli_args

    p = sub.add_parser(
        "reproduce",
        help="the paper's MVTec AD table by one command: train, generate and evaluate every defect type",
        description="For each category and defect type of an MVTec AD root: train a model (the reference's "
        "settings and data pipeline), generate the reference's sample count, evaluate each category with the "
        "paper's detector protocol beside the baselines, and write table.md in the paper's layout with the paper's "
        "numbers beside ours. Resumable at every stage; --dry-run prints the plan and estimated device hours. "
        "Several GPUs: accelerate launch --multi_gpu --num_processes N -m dualanodiff_core.cli reproduce ...",
    )
    cli_args.add_arguments(p)
    p.set_defaults(run=run_reproduce)


def run_reproduce(args) -> int:
    from .reproduce import cli_args

    return cli_args.run(args)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = ArgumentParser(
        prog="dualanodiff",
        description="DualAnoDiff: few-shot anomaly image generation with two interrelated diffusion branches.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_train(sub)
    _add_generate(sub)
    _add_convert(sub)
    _add_export(sub)
    _add_export_dataset(sub)
    _add_evaluate(sub)
    _add_reproduce(sub)
    parser.commands = sub.choices
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand, whose --help lists what it takes
        parser.commands.get(getattr(args, "command", None), parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except DualAnoDiffError as exc:
        print(f"dualanodiff {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
