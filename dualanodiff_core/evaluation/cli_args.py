"""``dualanodiff evaluate``: arguments, their checks, and the run.

Order of work: every argument is checked (numbers, paths, the test split, the synthetic sets' pairs and
mask sizes, the metric weight files) before any image is decoded; then the images are read and the
sets checked for usable pairs; only then is anything written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import checks
from ..errors import DualAnoDiffError
from .classifier import ClassifierConfig
from .training import DetectorConfig

BASELINE_CHOICES = ("real-only", "crop-paste", "none")
# --mix-real's share of the real shots among a batch's defective samples when given without a value
MIX_REAL = 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DetectorConfig()
    data = p.add_argument_group("real data (an MVTec AD category, or folders)")
    data.add_argument("--mvtec", type=Path, help="MVTec AD category folder (test/<defect>, ground_truth/<defect>, "
                      "train/good); test set = test/<defect> after the few shots, plus all of test/good")
    data.add_argument("--defects", nargs="+", metavar="NAME", help="defect types to evaluate (default: all of the "
                      "category's); the detector is trained on all of them together, metrics are per type and overall")
    data.add_argument("--split", default="floor", help="few shots per defect type, as the generator was trained "
                      "(train --split): floor = n // 3 (default), reference = the paper code's rounding, or a number; "
                      "the test set is always what remains, so it never holds a shot")
    data.add_argument("--images", type=Path, help="instead of --mvtec: folder of test images (an image without a "
                      "mask in --masks is normal)")
    data.add_argument("--masks", type=Path, help="with --images: test masks, matched by name (x.png with x.png or "
                      "x_mask.png)")
    data.add_argument("--normal", type=Path, help="with --images: normal (defect-free) training images")
    data.add_argument("--shot-images", type=Path, help="with --images: the few real defect images the generator was "
                      "trained on (for the baselines and checkpoint selection; never tested on)")
    data.add_argument("--shot-masks", type=Path, help="with --shot-images: their masks, matched by name")
    data.add_argument("--name", help="with --images: the category's name in the report and in synthetic set folders "
                      "(default: the --images folder's name)")
    sets = p.add_argument_group("what is compared")
    sets.add_argument("--synthetic", action="append", default=[], metavar="[NAME=]DIR",
                      help="a synthetic set written by generate (OUT/<object>/<defect>/{image,mask}/) or by the Save "
                      "Dataset node (pairs or MVTec layout); repeat for several; NAME defaults to the folder's name")
    sets.add_argument("--placed", action="append", default=[], metavar="[NAME=]DIR",
                      help="a set of defects placed on real normal images (generate --on-images, or the Paste Back "
                      "workflow saved by Save Dataset), read as --synthetic; reported as a placed set (generate's own "
                      "--on-images sets are recognised as placed under --synthetic too)")
    sets.add_argument("--mix-real", type=float, nargs="?", const=MIX_REAL, default=None, metavar="SHARE",
                      help="also train every set and crop-paste mixed with the few real shots (rows real+NAME): of "
                      "each batch's defective samples a share SHARE are the real shots, augmented as real-only, the "
                      f"rest from the set; the report's first table then compares them with real-only "
                      f"(default SHARE when given without a value: {MIX_REAL}; default: no mixed rows)")
    sets.add_argument("--baselines", nargs="+", choices=BASELINE_CHOICES, default=["real-only", "crop-paste"],
                      help="built-in baselines trained and scored the same way: real-only (the few real pairs, "
                      "augmented), crop-paste (real defects pasted onto normal images); none for neither "
                      "(default: both)")
    sets.add_argument("--max-pairs", type=int, default=0, help="use at most this many pairs per defect type of each "
                      "synthetic set, the first in numeric order 0, 1, 2, ... (default: 0 = all)")
    sets.add_argument("--augment-synthetic", action="store_true", help="augment the synthetic sets as the real-only "
                      "baseline is (flips, brightness/contrast); off by default, as in the paper")
    det = p.add_argument_group("detector (defaults: the paper's protocol)")
    det.add_argument("--resolution", type=int, default=d.resolution, help="image size in pixels, a multiple of 32 "
                     "(default: %(default)s)")
    det.add_argument("--epochs", type=int, default=d.epochs, help="training epochs (default: %(default)s, as the paper)")
    det.add_argument("--samples-per-epoch", type=int, default=d.samples_per_epoch,
                     help="training samples per epoch, half normal, half defective (default: %(default)s)")
    det.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per step (default: %(default)s)")
    det.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate, x0.2 at 80%% and 90%% of training "
                     "(default: %(default)g)")
    det.add_argument("--base-width", type=int, default=d.base_width, help="U-Net base width (default: %(default)s)")
    det.add_argument("--seeds", type=int, nargs="+", default=[0], help="one detector per set and seed; several give "
                     "mean and standard deviation (default: 0)")
    sel = det.add_mutually_exclusive_group()
    sel.add_argument("--select-on-test", action="store_true", help="choose each detector's checkpoint by its test-set "
                     "score, as the paper does (the report marks these numbers as optimistic)")
    sel.add_argument("--select-last", action="store_true", help="keep the last checkpoint, no selection")
    det.add_argument("--select-every", type=int, default=d.select_every, help="epochs between checkpoint-selection "
                     "rounds (default: %(default)s)")
    det.add_argument("--val-fraction", type=float, default=0.1, help="share of the normal training images held out "
                     "for checkpoint selection, with the few real shots (default: %(default)s)")
    det.add_argument("--pro-limit", type=float, default=d.pro_limit, help="FPR up to which AU-PRO is integrated "
                     "(default: %(default)s)")
    cls = p.add_argument_group("defect-type classification (the paper's third task; categories with 2+ defect types)")
    cls.add_argument("--classify", action="store_true", help="also train a ResNet-34 per set and seed on the set's "
                     "defective images labelled with their defect type and report its accuracy on the real test defects")
    cls.add_argument("--classifier-weights", type=Path, help="torchvision's ResNet-34 ImageNet weights "
                     "(resnet34-b627a593.pth) to fine-tune from; without it the classifier is trained from scratch "
                     "(the report says which)")
    cls.add_argument("--classifier-steps", type=int, default=ClassifierConfig.steps, help="classifier training steps "
                     "of --batch-size images (default: %(default)s)")
    gen = p.add_argument_group("generation metrics (optional; local weight files, nothing is downloaded)")
    gen.add_argument("--lpips-weights", type=Path, help="LPIPS linear layers for VGG (vgg.pth of the lpips package, "
                     "v0.1): enables IC-LPIPS; needs --vgg-weights too")
    gen.add_argument("--vgg-weights", type=Path, help="VGG16 ImageNet weights in torchvision's layout "
                     "(vgg16-397923af.pth), the LPIPS backbone")
    gen.add_argument("--inception-weights", type=Path, help="Inception v3 weights for IS: pt_inception-2015-12-05-"
                     "6726825d.pth (pytorch-fid) or weights-inception-2015-12-05-6726825d.pth (torch-fidelity)")
    gen.add_argument("--metric-weights", type=Path, help="a folder holding those files under their usual names; "
                     "each metric whose file is there is computed")
    out = p.add_argument_group("output")
    out.add_argument("--output-dir", type=Path, required=True, help="folder for metrics.json, report.md, curves.png, "
                     "predictions.png and the trained detectors (resumable: a finished detector is reused)")
    out.add_argument("--save-maps", type=Path, metavar="DIR", help="also write every predicted map as a 16-bit PNG with "
                     "DIR/maps.jsonl (set, seed, test image, ground truth, map)")
    out.add_argument("--previews", type=int, default=6, help="test images shown in predictions.png (default: %(default)s)")
    out.add_argument("--overwrite", action="store_true", help="retrain detectors in --output-dir that were trained "
                     "with other settings or data (otherwise such a folder is refused)")
    out.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")


def detector_config(args) -> DetectorConfig:
    select = "test" if args.select_on_test else "last" if args.select_last else "validation"
    return DetectorConfig(resolution=args.resolution, epochs=args.epochs, samples_per_epoch=args.samples_per_epoch,
                          batch_size=args.batch_size, lr=args.lr, base_width=args.base_width, select=select,
                          select_every=args.select_every, pro_limit=args.pro_limit)


def check_numbers(args) -> None:
    checks.at_least(args.resolution, 32, "--resolution")
    if args.resolution % 32:
        raise DualAnoDiffError(f"--resolution {args.resolution} is not a multiple of 32 (the detector halves it five times)")
    for flag in ("epochs", "samples_per_epoch", "base_width", "select_every"):
        checks.at_least(getattr(args, flag), 1, f"--{flag.replace('_', '-')}")
    checks.at_least(args.batch_size, 2, "--batch-size (batch norm needs two samples)")
    checks.at_least(args.max_pairs, 0, "--max-pairs")
    checks.at_least(args.classifier_steps, 1, "--classifier-steps")
    if args.classifier_weights is not None:
        if not args.classify:
            raise DualAnoDiffError("--classifier-weights is for --classify")
        checks.input_file(args.classifier_weights, "--classifier-weights")
    checks.at_least(args.previews, 0, "--previews")
    checks.between(args.lr, 0, 1, "--lr")
    checks.between(args.val_fraction, 0, 1, "--val-fraction")
    checks.between(args.pro_limit, 0, 1, "--pro-limit", closed=True)
    if args.pro_limit == 0:
        raise DualAnoDiffError("--pro-limit must be above 0")
    if len(set(args.seeds)) != len(args.seeds):
        raise DualAnoDiffError(f"--seeds {' '.join(map(str, args.seeds))}: each seed once")
    if args.mix_real is not None:
        checks.between(args.mix_real, 0, 1, "--mix-real")
    if "none" in args.baselines and len(args.baselines) > 1:
        raise DualAnoDiffError("--baselines none cannot be combined with a baseline")


def check_data_flags(args) -> None:
    folder_flags = ("images", "masks", "normal", "shot_images", "shot_masks", "name")
    given = [f for f in folder_flags if getattr(args, f) is not None]
    if args.mvtec is not None:
        if given:
            raise DualAnoDiffError(f"--mvtec and --{given[0].replace('_', '-')} exclude each other: give an MVTec "
                                   "category or test folders")
        checks.input_dir(args.mvtec, "--mvtec")
        return
    if args.images is None:
        raise DualAnoDiffError("give the real data: --mvtec CATEGORY, or --images DIR --masks DIR --normal DIR")
    for flag in ("masks", "normal"):
        if getattr(args, flag) is None:
            raise DualAnoDiffError(f"--images needs --{flag} DIR")
    if (args.shot_images is None) != (args.shot_masks is None):
        raise DualAnoDiffError("--shot-images and --shot-masks go together")
    for flag in ("images", "masks", "normal", "shot_images", "shot_masks"):
        if getattr(args, flag) is not None:
            checks.input_dir(getattr(args, flag), f"--{flag.replace('_', '-')}")
    if args.defects:
        raise DualAnoDiffError("--defects applies to --mvtec categories; a folder test set has one defect type")
    if args.name is not None:
        checks.folder_name(args.name, "--name")


def prepare(args):
    """Every check that needs no decoded image. Returns (category split, set sources, weights, config)."""
    from .generation_metrics import resolve_weights
    from .split import folder_category, mvtec_category, parse_split
    from .synthetic_sets import load_source, parse_set_argument

    check_numbers(args)
    check_data_flags(args)
    cfg = detector_config(args)
    parsed = [(*parse_set_argument(v), False) for v in args.synthetic] + \
        [(*parse_set_argument(v), True) for v in args.placed]
    names = [n for n, _, _ in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DualAnoDiffError(f"two synthetic sets are named {dupes[0]!r}; name them with NAME=DIR")
    baselines = [b for b in args.baselines if b != "none"]
    if not parsed and not baselines:
        raise DualAnoDiffError("nothing to compare: give --synthetic DIR and/or keep the baselines")
    if args.mix_real is not None and not parsed and "crop-paste" not in baselines:
        raise DualAnoDiffError("--mix-real mixes the real shots into the other sets and there is none: give "
                               "--synthetic DIR, --placed DIR or keep the crop-paste baseline")
    if args.mvtec is not None:
        category = mvtec_category(args.mvtec, args.defects, parse_split(args.split))
        defects = category.defects
    else:
        category = folder_category(args.images, args.masks, args.normal, args.shot_images, args.shot_masks, args.name)
        defects = None
    if (baselines or args.mix_real is not None) and not category.shots:
        needs = ", ".join(baselines + (["--mix-real"] if args.mix_real is not None else []))
        raise DualAnoDiffError(f"{needs} are built from the few-shot real defects and there are none "
                               f"({'; '.join(category.notes) or 'no shots'}); give them, or pass --baselines none "
                               "without --mix-real")
    sources = [load_source(n, d, category.name, defects, placed) for n, d, placed in parsed]
    weights = resolve_weights(args.lpips_weights, args.vgg_weights, args.inception_weights, args.metric_weights)
    checks.output_dir(args.output_dir, "--output-dir")
    if args.save_maps is not None:
        checks.output_dir(args.save_maps, "--save-maps")
    return category, sources, baselines, weights, cfg


def run(args) -> int:
    from .generation_metrics import generation_metrics
    from .loading import load_category, training_sets
    from .report import classification_table, table, user_rows, user_table
    from .run import choose_device, evaluate, selection_data

    category, sources, baselines, weights, cfg = prepare(args)
    device = choose_device(args.cpu)
    print(f"evaluate {category.name}: {len(category.test)} test images, {len(category.shots)} few-shot real defects, "
          f"{len(category.normals)} normal training images; sets: {', '.join([s.name for s in sources] + baselines)}; "
          f"device {device.type}", file=sys.stderr)
    data = load_category(category, cfg.resolution)
    normals = selection_data(data, cfg, args.val_fraction)[0]
    sets, _ = training_sets(data, sources, baselines, cfg.resolution, args.max_pairs, args.augment_synthetic,
                            normals, args.mix_real)
    generation = generation_metrics(weights, sources, category, device) if weights else {}
    classify = ClassifierConfig(steps=args.classifier_steps, batch_size=args.batch_size, weights=args.classifier_weights) \
        if args.classify else None
    summary = evaluate(data, sets, cfg, args.seeds, args.output_dir, device=device, val_fraction=args.val_fraction,
                       overwrite=args.overwrite, save_maps=args.save_maps, previews=args.previews, generation=generation,
                       classify=classify)
    if user_rows(summary):
        print(user_table(summary) + "\n")
    print(table(summary))
    if classification_table(summary):
        print("\ndefect-type classification accuracy (%):\n" + classification_table(summary))
    print(f"wrote {Path(args.output_dir) / 'report.md'} and metrics.json, curves.png, predictions.png", file=sys.stderr)
    return 0
