"""``dualanodiff reproduce``: arguments, the plan (``--dry-run``), the run and the table."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .. import checks
from ..errors import DualAnoDiffError
from ..training.data import FLIP_RULES, RESAMPLING
from ..training.train_args import BATCHES
from .plan import ReproduceConfig, passed_through


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ReproduceConfig(Path("."), Path("."), Path("."))
    data = p.add_argument_group("data and base model")
    data.add_argument("--mvtec", type=Path, required=True, help="MVTec AD root folder (bottle/, cable/, ... each with "
                      "test/, ground_truth/, train/good/)")
    data.add_argument("--categories", nargs="+", metavar="NAME", help="categories to run (default: every category "
                      "folder under --mvtec)")
    data.add_argument("--defects", nargs="+", metavar="NAME", help="defect types to run (default: all of each category)")
    data.add_argument("--base-model", type=Path, required=True, help="SD 1.5 diffusers folder or single-file checkpoint")
    data.add_argument("--output-dir", type=Path, required=True, help="folder for models/, samples/, evaluation/, logs/ "
                      "and table.md; run the same command again to continue an interrupted reproduction")
    data.add_argument("--split", default=d.split, help="few shots per defect type for training and evaluation: "
                      "floor = n // 3 (default), reference = the paper code's rounding, or a number")
    tr = p.add_argument_group("training (defaults: the reference's train.sh)")
    tr.add_argument("--steps", type=int, default=d.train_steps, help="training steps (default: %(default)s)")
    tr.add_argument("--rank", type=int, default=d.rank, help="LoRA rank (default: %(default)s)")
    tr.add_argument("--lr", type=float, default=d.lr, help="learning rate (default: %(default)g)")
    tr.add_argument("--pairs-per-step", type=int, default=d.pairs_per_step, help="pairs per step (default: %(default)s)")
    tr.add_argument("--resolution", type=int, default=d.resolution, help="training and generation size (default: %(default)s)")
    tr.add_argument("--seed", type=int, default=d.seed, help="training seed (default: %(default)s, as train.sh)")
    tr.add_argument("--flip", choices=tuple(FLIP_RULES), default=d.flip, help="flip rule, see `dualanodiff train --help` (default: %(default)s)")
    tr.add_argument("--resample", choices=RESAMPLING, default=d.resample, help="resizing, see `dualanodiff train --help` (default: %(default)s)")
    tr.add_argument("--batches", choices=BATCHES, default=d.batches, help="random or epoch (default: %(default)s, the reference's "
                    "shuffled passes)")
    ge = p.add_argument_group("generation (defaults: the reference's)")
    ge.add_argument("--pairs", type=int, default=d.pairs, help="pairs per defect type (default: %(default)s)")
    ge.add_argument("--sample-steps", type=int, default=d.sample_steps, help="PNDM steps (default: %(default)s)")
    ge.add_argument("--guidance", type=float, default=d.guidance, help="guidance scale (default: %(default)s)")
    ge.add_argument("--mask-method", choices=("threshold", "u2net"), default=d.mask_method,
                    help="how masks are cut from the anomaly images: threshold (no weights, default) or u2net "
                    "(the reference's; needs --u2net)")
    ge.add_argument("--u2net", type=Path, help="u2net.pth for --mask-method u2net")
    ev = p.add_argument_group("evaluation (the paper's detector protocol, see `dualanodiff evaluate --help`)")
    ev.add_argument("--select-on-test", action="store_true", help="choose detector checkpoints on the test set as the "
                    "paper does (the table marks the numbers as optimistic); default: on a validation split")
    ev.add_argument("--paper-numbers", type=Path, help="JSON of the paper's numbers ({\"mean\": {...}, \"categories\": "
                    "{...}}, fractions) to print beside ours (default: the shipped means)")
    more = p.add_argument_group("passing options through, running")
    for kind in ("train", "generate", "evaluate"):
        more.add_argument(f"--{kind}-args", default="", metavar="'OPTIONS'",
                          help=f"extra options for every `dualanodiff {kind}` stage, one quoted string, written out "
                          "in full; checked by that command's parser before any stage runs, and counted by the "
                          "dry run's estimate")
    more.add_argument("--cpu", action="store_true", help="run every stage on the CPU")
    more.add_argument("--dry-run", action="store_true", help="print the plan (stages, done or not, commands) and the "
                      "estimated device hours, then stop")
    more.add_argument("--step-seconds", metavar="train=S,sample=S,detector=S", help="step times for the estimate "
                      "(default: measured here with the base model and the first defect type, a few steps each)")
    more.add_argument("--poll-seconds", type=float, default=30.0, help="how often a waiting process looks for other "
                      "processes' sample sets (default: %(default)s)")


def config_from_args(args) -> ReproduceConfig:
    for flag in ("steps", "rank", "pairs_per_step", "resolution", "pairs", "sample_steps"):
        checks.at_least(getattr(args, flag), 1, f"--{flag.replace('_', '-')}")
    checks.finite(args.guidance, "--guidance")
    if not args.lr > 0:
        raise DualAnoDiffError(f"--lr must be above 0, got {args.lr}")
    if args.mask_method == "u2net" and args.u2net is None:
        raise DualAnoDiffError("--mask-method u2net needs --u2net FILE (u2net.pth)")
    checks.input_dir(args.mvtec, "--mvtec")
    checks.output_dir(args.output_dir, "--output-dir")
    cpu = ["--cpu"] if args.cpu else []
    return ReproduceConfig(
        mvtec=args.mvtec.absolute(), output_dir=args.output_dir.absolute(), base_model=args.base_model.absolute(),
        categories=args.categories, defects=args.defects, split=args.split, train_steps=args.steps, rank=args.rank,
        lr=args.lr, pairs_per_step=args.pairs_per_step, resolution=args.resolution, seed=args.seed, flip=args.flip,
        resample=args.resample, batches=args.batches, pairs=args.pairs, sample_steps=args.sample_steps,
        guidance=args.guidance, mask_method=args.mask_method, u2net=args.u2net.absolute() if args.u2net else None,
        select_on_test=args.select_on_test, train_args=shlex.split(args.train_args) + cpu,
        generate_args=shlex.split(args.generate_args) + cpu, evaluate_args=shlex.split(args.evaluate_args) + cpu)


def protocol_choices(cfg: ReproduceConfig) -> dict:
    return {"split": cfg.split, "training": f"{cfg.train_steps} steps, rank {cfg.rank}, lr {cfg.lr:g}, "
            f"{cfg.pairs_per_step} pairs/step, {cfg.resolution} px, seed {cfg.seed}, flips {cfg.flip}, "
            f"resampling {cfg.resample}, batches {cfg.batches}",
            "generation": f"{cfg.pairs} pairs per defect type, PNDM {cfg.sample_steps} steps, guidance {cfg.guidance:g}, "
            f"masks {cfg.mask_method}",
            "checkpoint selection": "on the test set (optimistic, as the paper)" if cfg.select_on_test
            else "on a validation split of the training data",
            **_passed_through(cfg)}


def _passed_through(cfg: ReproduceConfig) -> dict:
    """Options given with --train-args/--generate-args/--evaluate-args (they override the choices above)."""
    out = {}
    for stage, kind in (("training", "train"), ("generation", "generate"), ("evaluation", "evaluate")):
        given = passed_through(cfg, kind)
        if given:
            out[f"{stage} options"] = f"{shlex.join(given)} (by --{kind}-args, over the above)"
    return out


def print_plan(stages: list, cfg: ReproduceConfig, seconds, out=None) -> float:
    from .estimate import stage_hours
    from .plan import status

    out = out or sys.stdout
    total = left = 0.0
    print(f"step times: train {seconds.train:.3g} s, sampler call {seconds.sample:.3g} s, detector {seconds.detector:.3g} s "
          f"({seconds.source})", file=out)
    print("| stage | status | est. hours |\n|---|---|---|", file=out)
    for s in stages:
        hours, state = stage_hours(s, cfg, seconds), status(s, cfg)
        total += hours
        left += 0 if state == "done" else hours
        print(f"| {s.name} | {state} | {hours:.2f} |", file=out)
    kinds = {k: sum(1 for s in stages if s.kind == k) for k in ("train", "generate", "evaluate")}
    print(f"\n{kinds['train']} defect types, {kinds['evaluate']} categories: {total:.1f} device hours in all, "
          f"{left:.1f} left (one process; N processes divide it by about N)", file=out)
    print("\ncommands (each stage's log goes to OUTPUT_DIR/logs/):", file=out)
    for s in stages:
        print("  " + s.command(), file=out)
    return left


def run(args) -> int:
    from ..formats.base_model import check_base_model
    from .estimate import measure, parse_step_seconds
    from .plan import build_plan, check_stages
    from .runner import process_position, run_share, wait_for
    from .table import read_paper_numbers, write_table

    cfg = config_from_args(args)
    seconds = parse_step_seconds(args.step_seconds) if args.step_seconds else None
    read_paper_numbers(args.paper_numbers)  # a bad file stops here, not after days of training
    stages = build_plan(cfg)
    check_stages(stages, cfg)  # a pass-through option the stage would refuse stops here, not after the stages before it
    check_base_model(cfg.base_model)
    if args.dry_run:
        if seconds is None:
            seconds = measure(cfg, stages, cpu=args.cpu)
        print_plan(stages, cfg, seconds)
        return 0
    run_share(stages, cfg, args.poll_seconds)
    index, _, _ = process_position()
    if index != 0:
        return 0
    evaluations = [s for s in stages if s.kind == "evaluate"]
    wait_for(evaluations, cfg, args.poll_seconds)
    categories = [s.category for s in evaluations]
    table = write_table(cfg, categories, protocol_choices(cfg), args.paper_numbers)
    print(table.read_text(encoding="utf-8"))
    print(f"wrote {table} (and table.json; each category's report under evaluation/)", file=sys.stderr)
    return 0
