"""``dualanodiff generate``: N image/mask pairs from a base model and a DualAnoDiff checkpoint.

Writes ``OUT/<object>/<defect>/{image,fg,mask}/<i>.png`` (and optionally MVTec-style
``OUT/<object>/test/<defect>/<i>.png`` + ``OUT/<object>/ground_truth/<defect>/<i>_mask.png``) and a
``manifest.jsonl`` line per sample (seed and parameters); with ``--format coco`` / ``yolo`` it ends by
exporting the finished samples into ``OUT/coco`` / ``OUT/yolo`` (``export/``). Sample ``i`` uses seed ``seed + i``, so a
run can stop and resume anywhere, and be spread over several processes, with the same results.
A sample counts as done once its manifest line exists; nothing done is ever overwritten.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checks
from .backgrounds import background_latents, encode_backgrounds
from .dataset_layout import check_names, mvtec_paths, pair_paths
from .placement import check_same_sources, regions_setting, run_sources
from ..runtime.dtypes import torch_dtype
from ..errors import DualAnoDiffError
from ..export.formats import EXPORT_FORMATS, parse_formats
from ..masks.methods import MASK_METHODS, METHODS, check_mask_method
from ..options import use_defaults_of
from ..runtime.sampling import SCHEDULERS, scheduler_help

CLI_MODEL_HINTS = {"u2net": "--u2net FILE (u2net.pth or u2netp.pth)",
                   "sam": "--sam FILE (sam_vit_b_01ec64.pth, sam_vit_l or sam_vit_h)"}

# Settings a dataset folder is made with; continuing it with others would mix two datasets.
RUN_SETTINGS = ("checkpoint", "base_model", "scheduler", "steps", "guidance", "resolution", "mask_method",
                "mask_threshold", "bcm", "seed", "on_images", "variations", "regions",
                "anomaly_outside")


@dataclass(kw_only=True)
class GenerateConfig:
    """Everything ``dualanodiff generate`` takes (the flags of the same names); built by argparse
    (``options.from_namespace``) or directly. ``guidance`` and ``mask_threshold`` None mean the
    defaults that depend on BCM and on the mask method."""

    base_model: Path
    checkpoint: Path
    output_dir: Path
    object: str
    defect: str
    num_pairs: int = 500
    batch_size: int = 4
    scheduler: str = "pndm"
    steps: int = 100
    guidance: float | None = None
    seed: int = 0
    resolution: int = 512
    backgrounds: Path | None = None
    u2net: Path | None = None
    object_masks: Path | None = None
    mask_method: str = "threshold"
    mask_threshold: float | None = None
    sam: Path | None = None
    mvtec_layout: bool = False
    format: list | None = None  # --format values (None: pairs); see dataset_formats
    val_share: float | None = None  # None: export.writer.DEFAULT_VAL_SHARE
    split_seed: int | None = None  # None: 0
    tokenizer: Path | None = None
    comfyui: Path | None = None
    model_config: Path | None = None
    dtype: str = "auto"
    cpu: bool = False
    # placement on the user's normal images
    on_images: Path | None = None
    regions: Path | None = None
    box: str | None = None
    region: str | None = None  # "auto"
    training_masks: Path | None = None
    variations: int = 1
    anomaly_outside: str = "canvas"
    region_grow: float | None = None  # None: placement.AUTO_GROW


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-model", type=Path, required=True, help="SD 1.5 diffusers folder or single-file checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True, help="DualAnoDiff checkpoint (.safetensors), or a "
                   "reference pytorch_lora_weights.* file (converted on the fly)")
    p.add_argument("--output-dir", type=Path, required=True, help="dataset root; samples go to OUT/<object>/<defect>/")
    p.add_argument("--object", required=True, help="object category name, e.g. bottle (a folder name)")
    p.add_argument("--defect", required=True, help="defect type name, e.g. broken_large (a folder name)")
    p.add_argument("-n", "--num-pairs", type=int, default=500, help="total pairs in the dataset (default: 500, as the reference)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per UNet call (default: 4)")
    p.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="pndm",
                   help=f"sampler (default: pndm). {scheduler_help()}")
    p.add_argument("--steps", type=int, default=100, help="denoising steps (default: 100, as the reference; 50 with BCM)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: 2.5, or 2.0 with BCM)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed SEED + i (default: 0)")
    p.add_argument("--resolution", type=int, default=512, help="image size in pixels (default: 512)")
    p.add_argument("--backgrounds", type=Path, help="folder of good (defect-free) images for BCM backgrounds; "
                   "needs a BCM checkpoint and --u2net or --object-masks")
    p.add_argument("--u2net", type=Path, help="u2net.pth/u2netp.pth to cut the object out of the backgrounds")
    p.add_argument("--object-masks", type=Path, help="object masks named like the images: of --backgrounds (BCM), "
                   "or of --on-images (for --region auto, and as each image's own background with a BCM checkpoint)")
    p.add_argument("--mask-method", choices=METHODS, default="threshold",
                   help="how masks are cut out of the anomaly image: " + "; ".join(
                       f"{m.name}: {m.summary}" + (f" (needs {', '.join('--' + n for n in m.needs)})" if m.needs else "")
                       for m in MASK_METHODS.values()) + " (default: threshold)")
    p.add_argument("--mask-threshold", type=float, default=None, help="binarisation threshold (default: 0.1 for "
                   "threshold, 0.5 for u2net)")
    p.add_argument("--sam", type=Path, help="segment-anything checkpoint (sam_vit_b/l/h) for --mask-method sam")
    p.add_argument("--mvtec-layout", action="store_true", help="also write MVTec-style test/<defect>/ and "
                   "ground_truth/<defect>/ (the same as --format mvtec)")
    p.add_argument("--format", action="append", metavar="FORMATS", help="dataset formats, several joined by commas "
                   "or the option repeated: pairs (always written: OUT/<object>/<defect>/{image,fg,mask}/, what a run "
                   "resumes from), mvtec (also test/ + ground_truth/), coco (OUT/coco/: COCO instance segmentation, "
                   "RLE masks), yolo (OUT/yolo/: Ultralytics segmentation polygons, data.yaml); coco and yolo are "
                   "exported from the finished samples at the end, extending an export already there "
                   "(default: pairs; docs/datasets.md)")
    p.add_argument("--val-share", type=float, metavar="F", help="with --format coco/yolo: the share of images drawn "
                   "for validation (default: 0.1; as export-dataset --val-share)")
    p.add_argument("--split-seed", type=int, help="with --format coco/yolo: seed of the train/val draw (default: 0)")
    p.add_argument("--tokenizer", type=Path, help="folder with CLIP vocab.json + merges.txt (see dualanodiff train)")
    p.add_argument("--comfyui", type=Path, help="a ComfyUI install to take the tokenizer from")
    p.add_argument("--model-config", type=Path, help="diffusers config folder for single-file checkpoints")
    p.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                   help="compute precision (default: auto = fp16 on CUDA, fp32 elsewhere)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    place = p.add_argument_group("placement on your normal images (instead of drawing whole objects)")
    place.add_argument("--on-images", type=Path, help="folder of normal images to put defects on; outside each "
                       "image's region the output equals the image pixel for pixel, the mask lies inside the "
                       "region; the pair count is images x --variations (-n is not used)")
    place.add_argument("--regions", type=Path, help="folder of region masks named like the images (x.png or "
                       "x_mask.png, white = where the defect may go), the size of their images")
    place.add_argument("--box", help="one region for every image: x,y,w,h in pixels")
    place.add_argument("--region", choices=("auto",), help="auto: a random place on the object per pair, a box "
                       "the size of a training defect (drawn from --training-masks) grown by --region-grow, cut to "
                       "the object; the object from --object-masks, else U-2-Net (--u2net), else the pixels that "
                       "differ from the image border's colour")
    place.add_argument("--region-grow", type=float, metavar="F", help="with --region auto: each side of the drawn "
                       "defect's box grows by F times its size and 2 px, so the box is (1 + 2F) times the defect plus "
                       "4 px (default: 1, measured in the demo world: at 0.25 a third of the defects were cut short "
                       "or not drawn; see docs/demo.md)")
    place.add_argument("--training-masks", type=Path, help="for --region auto: the few-shot defect masks the "
                       "checkpoint was trained on (their sizes)")
    place.add_argument("--anomaly-outside", choices=("canvas", "free"), default="canvas", help="the anomaly branch "
                       "outside the region: canvas (held to its empty mid-grey canvas outside the latent cells lying "
                       "wholly inside the region, so it draws the defect inside it) or free (drawn anywhere, its mask "
                       "cut to the region) (default: canvas; the demo world measures both, see docs/demo.md)")
    place.add_argument("--variations", type=int, default=1, help="pairs per image, each from its own seed "
                       "(default: 1)")
    use_defaults_of(p, GenerateConfig)


def read_manifest(root: Path) -> dict:
    done = {}
    for part in sorted(root.glob("manifest*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                done[entry["index"]] = entry
    return done


def dataset_formats(args) -> tuple:
    """The formats a run writes: ``--format`` (pairs always), plus mvtec with ``--mvtec-layout``."""
    named = parse_formats(args.format) if args.format else ()
    return tuple(f for f in ("pairs", "mvtec", *EXPORT_FORMATS)
                 if f == "pairs" or f in named or (f == "mvtec" and args.mvtec_layout))


def export_settings(args):
    from ..export.writer import DEFAULT_VAL_SHARE, ExportSettings

    return ExportSettings(DEFAULT_VAL_SHARE if args.val_share is None else args.val_share,
                          0 if args.split_seed is None else args.split_seed)


def sample_paths(out: Path, obj: str, defect: str, i: int, mvtec: bool) -> dict:
    paths = pair_paths(out, obj, defect, i)
    if mvtec:
        paths.update({f"mvtec_{role}": path for role, path in mvtec_paths(out, obj, defect, i).items()})
    return paths


def _device_dtype(args, accelerator):
    device = accelerator.device
    if args.dtype == "auto":
        return device, torch.float16 if device.type == "cuda" else torch.float32
    return device, torch_dtype(args.dtype)


@dataclass
class GenerateRun:
    """A checked ``generate`` run: nothing loaded but the DualAnoDiff checkpoint, nothing written."""

    args: GenerateConfig
    checkpoint: object
    root: Path  # OUT/<object>/<defect>
    guidance: float
    settings: dict
    done: dict
    total: int = 0      # pairs in the finished dataset
    bcm: bool = False   # background conditioning: --backgrounds, or a BCM checkpoint on --on-images
    sources: list = None  # placement: the PlacementSource of each pair


def run_settings(args, guidance: float, bcm: bool) -> dict:
    return {"checkpoint": Path(args.checkpoint).name, "base_model": Path(args.base_model).name,
            "scheduler": args.scheduler, "steps": args.steps, "guidance": guidance, "resolution": args.resolution,
            "mask_method": args.mask_method, "mask_threshold": args.mask_threshold, "bcm": bcm,
            "seed": args.seed, **({"on_images": str(args.on_images), "variations": args.variations,
                                   "regions": regions_setting(args), "anomaly_outside": args.anomaly_outside}
                                  if args.on_images is not None else {})}


def recorded_settings(done: dict) -> dict:
    """The settings an existing dataset folder was made with (older manifests lack some keys)."""
    if not done:
        return {}
    entry = done[min(done)]
    recorded = {k: entry[k] for k in RUN_SETTINGS if k in entry}
    recorded["seed"] = entry.get("run_seed", entry["seed"] - entry["index"])
    return recorded


def check_arguments(args) -> None:
    """Every rule on the arguments alone (no file is read): names, numbers, paths and what they are."""
    formats = dataset_formats(args)
    check_names(args.object, args.defect, "mvtec" in formats, "--object", "--defect")
    exports = [f for f in formats if f in EXPORT_FORMATS]
    if args.object in exports:
        raise DualAnoDiffError(f"--object {args.object} is the name of the {args.object} export's folder in "
                               "--output-dir; choose another object name")
    if (args.val_share is not None or args.split_seed is not None) and not exports:
        raise DualAnoDiffError("--val-share and --split-seed split the coco/yolo export: add --format coco or yolo")
    if args.val_share is not None:
        from ..export.writer import check_settings

        check_settings(export_settings(args))
    for flag in ("num_pairs", "batch_size", "steps"):
        checks.at_least(getattr(args, flag), 1, f"--{flag.replace('_', '-')}")
    checks.resolution(args.resolution)
    if args.guidance is not None:
        checks.finite(args.guidance, "--guidance")
    if args.mask_threshold is not None:
        checks.between(args.mask_threshold, 0, 1, "--mask-threshold")
    checks.output_dir(args.output_dir, "--output-dir")
    checks.input_file(args.checkpoint, "--checkpoint", (".safetensors", ".bin"))
    for flag in ("tokenizer", "comfyui", "model_config", "backgrounds", "object_masks"):
        if getattr(args, flag):
            checks.input_dir(getattr(args, flag), f"--{flag.replace('_', '-')}")
    for flag in ("u2net", "sam"):
        if getattr(args, flag):
            checks.input_file(getattr(args, flag), f"--{flag}")
    method = check_mask_method(args.mask_method, {k for k in ("u2net", "sam") if getattr(args, k)}, CLI_MODEL_HINTS,
                               f"--mask-method {args.mask_method}")
    if args.backgrounds and not (args.u2net or args.object_masks):
        raise DualAnoDiffError("--backgrounds needs --u2net FILE or --object-masks DIR to cut the object out")
    checks.at_least(args.variations, 1, "--variations")
    auto = args.region == "auto"
    if args.on_images is None:
        if args.regions is not None or args.box is not None or args.region is not None or args.variations != 1 \
                or args.anomaly_outside != "canvas":
            raise DualAnoDiffError("--regions, --box, --region, --variations and --anomaly-outside place defects on "
                                   "your images: add --on-images DIR")
    else:
        checks.input_dir(args.on_images, "--on-images")
        if sum(x is not None for x in (args.regions, args.box, args.region)) != 1:
            raise DualAnoDiffError("--on-images needs where the defects may go, one of: --regions DIR, --box x,y,w,h, "
                                   "--region auto")
        if args.regions is not None:
            checks.input_dir(args.regions, "--regions")
        if auto and args.training_masks is None:
            raise DualAnoDiffError("--region auto draws each region's size from the training defects: add "
                                   "--training-masks DIR (the few-shot masks)")
        if args.backgrounds:
            raise DualAnoDiffError("--backgrounds and --on-images do not go together: with a BCM checkpoint each "
                                   "--on-images image is its own background")
    if args.region_grow is not None:
        if not auto:
            raise DualAnoDiffError("--region-grow is for --region auto")
        checks.finite(args.region_grow, "--region-grow")
        checks.at_least(args.region_grow, 0, "--region-grow")
    if args.training_masks is not None:
        if not auto:
            raise DualAnoDiffError("--training-masks is for --region auto")
        checks.input_dir(args.training_masks, "--training-masks")
    if (args.u2net or args.object_masks) and not args.backgrounds and args.on_images is None \
            and not (args.u2net and "u2net" in method.uses):
        raise DualAnoDiffError("--u2net/--object-masks given but unused: they cut the object out of --backgrounds "
                               "or of --on-images (or make masks with --mask-method u2net)")


def prepare(args) -> GenerateRun:
    """Check everything a run needs before any model loads or any file is written."""
    from ..formats.base_model import check_base_model
    from ..formats.checkpoint import open_checkpoint
    from ..training.data import _images

    check_arguments(args)
    check_base_model(args.base_model, args.tokenizer, args.comfyui, args.model_config)
    ckpt = open_checkpoint(args.checkpoint)
    if args.backgrounds:
        if not ckpt.has("bcm"):
            raise DualAnoDiffError(f"--backgrounds given, but {args.checkpoint} has no BCM weights")
        if not _images(Path(args.backgrounds)):
            raise DualAnoDiffError(f"no images in --backgrounds {args.backgrounds}")
    bcm = bool(args.backgrounds) or (args.on_images is not None and ckpt.has("bcm"))
    if args.on_images is not None and not bcm and args.region != "auto" and (args.u2net or args.object_masks) \
            and not (args.u2net and "u2net" in MASK_METHODS[args.mask_method].uses):
        raise DualAnoDiffError(f"--u2net/--object-masks given but unused: {args.checkpoint} has no BCM weights and "
                               "the regions are given (they are for --region auto and BCM checkpoints)")
    guidance = args.guidance if args.guidance is not None else (2.0 if bcm else 2.5)
    root = Path(args.output_dir) / args.object / args.defect
    checks.output_dir(root, "the dataset folder")
    done = read_manifest(root) if root.is_dir() else {}
    settings = run_settings(args, guidance, bcm)
    checks.same_settings(recorded_settings(done), settings, root,
                         "continue it with the same settings, or choose another --output-dir, --object or --defect")
    exports = tuple(f for f in dataset_formats(args) if f in EXPORT_FORMATS)
    if exports:
        from ..export.writer import check_target

        check_target(args.output_dir, exports, export_settings(args))
    sources = run_sources(args, bcm) if args.on_images is not None else None
    if sources:
        check_same_sources(done, sources, args.on_images, root)
    total = len(sources) if sources else args.num_pairs
    return GenerateRun(args, ckpt, root, guidance, settings, done, total=total, bcm=bcm, sources=sources)


@dataclass
class Sampler:
    """Everything loaded for sampling: models, prompts, backgrounds, mask models (``load``)."""

    dual: object
    vae: object
    scheduler_config: dict
    cond: torch.Tensor
    uncond: torch.Tensor
    noise_schedule: object
    backgrounds: torch.Tensor | None
    zero: torch.Tensor | None
    u2net: object
    sam: object
    canvas: torch.Tensor | None = None  # placement: latent of the anomaly branch's empty mid-grey canvas


def load(run: GenerateRun, device, dtype) -> Sampler:
    """Models and everything sampling reads, on ``device`` in ``dtype``."""
    from diffusers import DDPMScheduler

    from ..formats.base_model import load_base_model, place
    from ..runtime.diffusers_adapter import load_dual_unet
    from ..runtime.sampling import encode_prompts, vae_encode

    args, ckpt = run.args, run.checkpoint
    method = MASK_METHODS[args.mask_method]
    sam = _load_sam(args.sam) if "sam" in method.uses else None
    u2net = None
    if args.u2net and "u2net" in method.uses:
        from ..masks.u2net import load_u2net

        u2net = load_u2net(args.u2net)
    base = load_base_model(args.base_model, args.tokenizer, args.comfyui, args.model_config)
    unet, vae, te = (place(m, device, dtype) for m in (base.unet, base.vae, base.text_encoder))
    dual = load_dual_unet(unet, ckpt, text_encoder=te)
    prompts = ckpt.prompts
    with torch.no_grad():
        emb = encode_prompts(base.tokenizer, te, [prompts["global"], prompts["anomaly"], prompts["negative"]])
    backgrounds = zero = canvas = None
    if args.backgrounds:
        backgrounds = background_latents(args, vae, args.resolution)
    blank = torch.zeros(1, 3, args.resolution, args.resolution)  # mid grey: 0 in [-1, 1]
    with torch.no_grad():
        if run.bcm:
            zero = vae_encode(vae, blank, scaled=False).float().cpu()
        if run.sources and args.anomaly_outside == "canvas":
            canvas = vae_encode(vae, blank).float()
    return Sampler(dual, vae, base.scheduler_config, emb[:2], emb[2:].expand(2, -1, -1),
                   DDPMScheduler.from_config(base.scheduler_config), backgrounds, zero, u2net, sam, canvas)


def sample(run: GenerateRun, sampler: Sampler, batch: list) -> list:
    """Pairs ``batch`` (indices; pair i from seed SEED + i), one dict per pair: uint8 arrays ``image``
    (global), ``fg`` (anomaly part), ``mask``, plus ``empty`` and the manifest's ``extra`` entries.
    With ``--on-images`` each pair is placed on its source image (``placement``)."""
    from ..image_io import to_uint8
    from ..masks.extract import extract_masks
    from ..runtime.sampling import latent_scale, make_scheduler, sample_pairs, vae_decode, vae_encode
    from .placement import inner_keep_mask, keep_mask, placed_pair

    args = run.args
    gens = [torch.Generator().manual_seed(args.seed + i) for i in batch]
    bg = None if sampler.backgrounds is None else sampler.backgrounds[torch.tensor(batch) % len(sampler.backgrounds)]
    latent = (args.resolution // latent_scale(sampler.vae),) * 2
    keep = keep_anomaly = sources = None
    if run.sources:
        sources = [run.sources[i] for i in batch]
        images_in = torch.stack([s.at_resolution(args.resolution) for s in sources])
        with torch.no_grad():
            clean = vae_encode(sampler.vae, images_in * 2 - 1).float()
        regions = torch.stack([s.region_at_resolution(args.resolution) for s in sources])
        keep = (clean, keep_mask(regions, latent, margin=0))  # every cell the region touches is generated
        if sampler.canvas is not None:
            keep_anomaly = (sampler.canvas, inner_keep_mask(regions, latent))
        if run.bcm and not args.backgrounds:  # BCM: the image is its own background
            bg = encode_backgrounds(sampler.vae, images_in, torch.stack([s.object_at_resolution(args.resolution)
                                                                         for s in sources]))
    latents = sample_pairs(sampler.dual, make_scheduler(args.scheduler, sampler.scheduler_config), sampler.cond,
                           sampler.uncond, gens, latent, steps=args.steps, guidance=run.guidance, backgrounds=bg,
                           zero_background=sampler.zero, noise_schedule=sampler.noise_schedule, keep=keep,
                           keep_anomaly=keep_anomaly)
    with torch.no_grad():
        images = vae_decode(sampler.vae, latents)
    masks = extract_masks(images[1::2], args.mask_method, u2net=sampler.u2net, sam=sampler.sam,
                          threshold=args.mask_threshold)
    pairs = []
    for k, i in enumerate(batch):
        pair = {"image": to_uint8(images[2 * k]), "fg": to_uint8(images[2 * k + 1]),
                "mask": to_uint8(masks.binary[k]), "empty": masks.empty[k], "extra": {}}
        if sources is not None:
            pair = placed_pair(pair, sources[k], variation=i % args.variations)
        pairs.append(pair)
    return pairs


def write(run: GenerateRun, batch: list, pairs: list, manifest: Path) -> None:
    """The batch's files (only unfinished indices reach here) and then, per pair, its manifest line:
    a pair counts as done once its line exists."""
    from ..image_io import save_array_png

    args, out = run.args, Path(run.args.output_dir)
    params = {k: v for k, v in run.settings.items() if k != "seed"} | {"run_seed": args.seed}
    with manifest.open("a", encoding="utf-8") as log:
        for pair, i in zip(pairs, batch):
            paths = sample_paths(out, args.object, args.defect, i, "mvtec" in dataset_formats(args))
            files = {"image": pair["image"], "fg": pair["fg"], "mask": pair["mask"],
                     "mvtec_image": pair["image"], "mvtec_mask": pair["mask"]}
            for key, path in paths.items():
                save_array_png(files[key], path, overwrite=True)
            entry = {"index": i, "seed": args.seed + i, "mask_empty": pair["empty"], **pair["extra"],
                     "files": {k2: str(p.relative_to(out)) for k2, p in paths.items()}, **params}
            log.write(json.dumps(entry) + "\n")
            log.flush()


def generate(args: GenerateConfig, progress=None) -> Path:
    """prepare (every check), load, then sample and write batch by batch; returns OUT/<object>/<defect>.
    ``progress``: ``(pairs done, pairs to do)`` after every batch, in place of the progress bar."""
    run = prepare(args)
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from ..processes import announce, cpu_threads

    acc = Accelerator(cpu=args.cpu)
    announce(acc, "generate", cpu_threads(acc))
    device, dtype = _device_dtype(args, acc)
    todo = [i for i in range(run.total) if i not in run.done][acc.process_index::acc.num_processes]
    sampler = load(run, device, dtype) if todo else None  # a finished dataset: only the exports
    manifest = run.root / ("manifest.jsonl" if acc.num_processes == 1 else f"manifest.part{acc.process_index}.jsonl")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), desc=f"generate {args.object}/{args.defect}",
               disable=not acc.is_local_main_process or progress is not None)
    for start in range(0, len(todo), args.batch_size):
        batch = todo[start:start + args.batch_size]
        write(run, batch, sample(run, sampler, batch), manifest)
        bar.update(len(batch))
        if progress is not None:
            progress(start + len(batch), len(todo))
    bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process and acc.num_processes > 1:
        _merge_manifests(run.root)
    exports = tuple(f for f in dataset_formats(args) if f in EXPORT_FORMATS)
    if acc.is_main_process and exports:
        from ..export.command import export_written

        for line in export_written(run.root, Path(args.output_dir), exports, export_settings(args)):
            print(f"wrote {line}")
    return run.root


def _merge_manifests(root: Path) -> None:
    entries = read_manifest(root)
    target = root / "manifest.jsonl"
    tmp = root / ".manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(entries[i]) + "\n" for i in sorted(entries)), encoding="utf-8")
    tmp.replace(target)
    for part in root.glob("manifest.part*.jsonl"):
        part.unlink()


def _load_sam(path: Path):
    from ..masks.sam_loader import load_sam

    return load_sam(path)
