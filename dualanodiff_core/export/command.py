"""``dualanodiff export-dataset``, and the export step ``generate --format coco|yolo`` ends with."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DualAnoDiffError
from .formats import EXPORT_FORMATS, FORMATS, parse_formats
from .source import read_samples
from .writer import DEFAULT_VAL_SHARE, ExportSettings, check_settings, check_target, describe, export


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, metavar="DIR", help="a dataset written by dualanodiff generate (its "
                   "--output-dir, an object's or a defect's folder) or by the Save Dataset node (its folder): the "
                   "samples its manifest.jsonl files list are exported")
    p.add_argument("--format", action="append", required=True, metavar="FORMATS", help="coco (instance "
                   "segmentation, RLE masks), yolo (Ultralytics segmentation polygons), or both: --format coco,yolo "
                   "or the option twice")
    p.add_argument("--output", type=Path, help="where the exports go: OUT/coco/ and OUT/yolo/ (default: DIR). An "
                   "existing export there made with the same settings is extended: images it lacks are added, "
                   "categories keep their ids")
    p.add_argument("--val-share", type=float, default=DEFAULT_VAL_SHARE, metavar="F", help="share of images drawn "
                   "for validation, each by a hash of the seed and its name, so an image never moves when the "
                   "export is extended (default: %(default)s; 0: all train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val draw (default: %(default)s)")


def export_formats(values, what: str = "--format") -> tuple:
    """coco and/or yolo out of ``values``; pairs and mvtec are refused with where they come from."""
    formats = parse_formats(values, what, FORMATS)
    layouts = [f for f in formats if f not in EXPORT_FORMATS]
    if layouts:
        raise DualAnoDiffError(f"{what} {layouts[0]}: export-dataset writes {' and '.join(EXPORT_FORMATS)} from a "
                               "dataset that holds the pairs or mvtec layout (dualanodiff generate --format and the "
                               "Save Dataset node write those)")
    return formats


def run(args) -> int:
    formats = export_formats(args.format)
    settings = check_settings(ExportSettings(args.val_share, args.seed))
    out = args.output if args.output is not None else args.dataset
    check_target(out, formats, settings)
    samples = read_samples(args.dataset)
    for line in describe(export(samples, out, formats, settings), out):
        print(f"wrote {line}")
    return 0


def export_written(root: Path, out: Path, formats: tuple, settings: ExportSettings) -> list:
    """Export the finished samples under ``root`` into ``out`` (what generate and the node call after
    writing); returns the summary lines."""
    if not formats:
        return []
    return describe(export(read_samples(root), out, formats, settings), out)
