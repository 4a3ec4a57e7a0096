"""What ``dualanodiff reproduce`` will run: per defect type a training and a generation, per category an
evaluation, each a ``dualanodiff`` command with its own output folder, and whether it is already done.

Layout under ``--output-dir``::

    models/<category>/<defect>/<category>_<defect>.safetensors   (train; checkpoints/ while running)
    samples/<category>/<defect>/{image,fg,mask}/, manifest.jsonl  (generate)
    evaluation/<category>/metrics.json, report.md                (evaluate)
    logs/<stage>.log                                             (each command's own output)
    table.md, table.json                                         (the paper-layout table)
"""
from __future__ import annotations

import argparse
import functools
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DualAnoDiffError

GOOD = "good"


@dataclass
class ReproduceConfig:
    """Everything a reproduction needs; the defaults are the reference's settings."""
    mvtec: Path
    output_dir: Path
    base_model: Path
    categories: list | None = None       # None: every category folder under mvtec
    defects: list | None = None          # None: every defect type of each category
    split: str = "floor"
    # training (the reference's train.sh: rank 32, lr 2e-5, 5000 steps, 4 pairs, 512 px, seed 32)
    train_steps: int = 5000
    rank: int = 32
    lr: float = 2e-5
    pairs_per_step: int = 4
    resolution: int = 512
    seed: int = 32
    flip: str = "reference"
    resample: str = "bilinear"
    batches: str = "epoch"
    # generation (the reference's: PNDM 100 steps, guidance 2.5, 500 pairs per defect type)
    pairs: int = 500
    sample_steps: int = 100
    guidance: float = 2.5
    mask_method: str = "threshold"
    u2net: Path | None = None
    # evaluation (the paper's detector protocol; selection on validation unless select_on_test)
    select_on_test: bool = False
    # extra options passed through to each command, e.g. "--cpu" or "--batch-size 8"
    train_args: list = field(default_factory=list)
    generate_args: list = field(default_factory=list)
    evaluate_args: list = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    kind: str                 # train | generate | evaluate
    category: str
    defect: str | None        # None for a category's evaluation
    argv: tuple               # the dualanodiff command line after the command name
    output: Path              # the file or folder that holds its result

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.category}" + (f"-{self.defect}" if self.defect else "")

    def command(self) -> str:
        return shlex.join(["dualanodiff", self.kind, *self.argv])


def discover(mvtec: Path, categories: list | None, defects: list | None) -> dict:
    """{category: [defect types]} of an MVTec AD root, checked against the names asked for."""
    mvtec = Path(mvtec)
    if not mvtec.is_dir():
        raise DualAnoDiffError(f"--mvtec {mvtec}: no such folder (give the MVTec AD root, holding bottle/, cable/, ...)")
    found = sorted(p.name for p in mvtec.iterdir() if (p / "test").is_dir())
    if not found:
        raise DualAnoDiffError(f"--mvtec {mvtec} holds no category folders with a test/ subfolder; give the MVTec AD "
                               "root (for one category, give its parent and --categories NAME)")
    missing = [c for c in categories or [] if c not in found]
    if missing:
        raise DualAnoDiffError(f"--categories: no category {', '.join(map(repr, missing))} in {mvtec}; "
                               f"available: {', '.join(found)}")
    plan = {}
    for c in categories or found:
        types = sorted(p.name for p in (mvtec / c / "test").iterdir() if p.is_dir() and p.name != GOOD)
        plan[c] = [d for d in types if defects is None or d in defects]
    unknown = [d for d in defects or [] if not any(d in v for v in plan.values())]
    if unknown:
        raise DualAnoDiffError(f"--defects: no defect type {', '.join(map(repr, unknown))} in the chosen categories")
    empty = [c for c, v in plan.items() if not v]
    if empty:
        raise DualAnoDiffError(f"--defects leaves no defect type in {', '.join(empty)}; choose --categories too")
    return plan


def model_dir(cfg: ReproduceConfig, category: str, defect: str) -> Path:
    return Path(cfg.output_dir) / "models" / category / defect


def model_file(cfg: ReproduceConfig, category: str, defect: str) -> Path:
    return model_dir(cfg, category, defect) / f"{category}_{defect}.safetensors"


def samples_root(cfg: ReproduceConfig) -> Path:
    return Path(cfg.output_dir) / "samples"


def evaluation_dir(cfg: ReproduceConfig, category: str) -> Path:
    return Path(cfg.output_dir) / "evaluation" / category


def train_argv(cfg: ReproduceConfig, category: str, defect: str) -> list:
    return ["--mvtec", str(Path(cfg.mvtec) / category), "--defect", defect, "--split", str(cfg.split),
            "--base-model", str(cfg.base_model), "--output-dir", str(model_dir(cfg, category, defect)),
            "--name", f"{category}_{defect}", "--steps", str(cfg.train_steps), "--rank", str(cfg.rank),
            "--lr", str(cfg.lr), "--pairs-per-step", str(cfg.pairs_per_step), "--resolution", str(cfg.resolution),
            "--seed", str(cfg.seed), "--flip", cfg.flip, "--resample", cfg.resample, "--batches", cfg.batches,
            *cfg.train_args]


def generate_argv(cfg: ReproduceConfig, category: str, defect: str) -> list:
    extra = ["--u2net", str(cfg.u2net)] if cfg.u2net is not None and cfg.mask_method != "threshold" else []
    return ["--base-model", str(cfg.base_model), "--checkpoint", str(model_file(cfg, category, defect)),
            "--output-dir", str(samples_root(cfg)), "--object", category, "--defect", defect,
            "-n", str(cfg.pairs), "--scheduler", "pndm", "--steps", str(cfg.sample_steps),
            "--guidance", str(cfg.guidance), "--resolution", str(cfg.resolution), "--mask-method", cfg.mask_method,
            *extra, *cfg.generate_args]


def evaluate_argv(cfg: ReproduceConfig, category: str, defects: list) -> list:
    return ["--mvtec", str(Path(cfg.mvtec) / category), "--defects", *defects, "--split", str(cfg.split),
            "--synthetic", f"DualAnoDiff={samples_root(cfg)}", "--output-dir", str(evaluation_dir(cfg, category)),
            *(["--select-on-test"] if cfg.select_on_test else []), *cfg.evaluate_args]


def build_plan(cfg: ReproduceConfig) -> list:
    """Stages in run order: each defect type's training then generation, then each category's evaluation."""
    found = discover(cfg.mvtec, cfg.categories, cfg.defects)
    stages = []
    for category, defects in found.items():
        for d in defects:
            stages.append(Stage("train", category, d, tuple(train_argv(cfg, category, d)), model_file(cfg, category, d)))
            stages.append(Stage("generate", category, d, tuple(generate_argv(cfg, category, d)),
                                samples_root(cfg) / category / d))
    for category, defects in found.items():
        stages.append(Stage("evaluate", category, None, tuple(evaluate_argv(cfg, category, defects)),
                            evaluation_dir(cfg, category) / "metrics.json"))
    return stages


def status(stage: Stage, cfg: ReproduceConfig) -> str:
    """``done``, ``partial`` (a resumable start exists) or ``pending``, from the files alone."""
    if stage.kind == "train":
        from ..training.train_checkpoints import checkpoint_dirs

        if stage.output.is_file():
            return "done"
        return "partial" if checkpoint_dirs(stage.output.parent) else "pending"
    if stage.kind == "generate":
        from ..generation.generate import read_manifest

        done = len(read_manifest(stage.output)) if stage.output.is_dir() else 0
        wanted = stage_options(stage, cfg).num_pairs  # -n passed through with --generate-args counts
        return "done" if done >= wanted else "partial" if done else "pending"
    if stage.output.is_file():
        return "done"
    return "partial" if stage.output.parent.is_dir() else "pending"


def resume_flags(stage: Stage, cfg: ReproduceConfig) -> list:
    """What a stage needs to continue a partial run instead of refusing it."""
    from ..training.train_checkpoints import checkpoint_dirs

    if stage.kind == "train" and not stage.output.is_file() and checkpoint_dirs(stage.output.parent):
        return ["--resume", "latest"]
    return []


def passed_through(cfg: ReproduceConfig, kind: str) -> list:
    """What the user gave with ``--KIND-args`` (without the ``--cpu`` that reproduce's own ``--cpu`` adds)."""
    return [a for a in getattr(cfg, f"{kind}_args") if a != "--cpu"]


def _refuse(message):
    raise DualAnoDiffError(message)


@functools.lru_cache(maxsize=None)
def _command_parser(kind: str) -> argparse.ArgumentParser:
    """The parser ``dualanodiff KIND`` runs with (abbreviations off), raising instead of exiting."""
    from ..cli import build_parser

    parser = build_parser().commands[kind]
    parser.error = _refuse
    return parser


def _check_train(args, stage: Stage, cfg: ReproduceConfig) -> None:
    from ..options import from_namespace
    from ..training.train_args import TrainConfig, check_arguments

    check_arguments(from_namespace(TrainConfig, args))


def _check_generate(args, stage: Stage, cfg: ReproduceConfig) -> None:
    from ..generation.generate import GenerateConfig, check_arguments
    from ..options import from_namespace

    config = from_namespace(GenerateConfig, args)
    planned = model_file(cfg, stage.category, stage.defect)
    try:
        check_arguments(config)
    except DualAnoDiffError as exc:
        # the model it samples from is written by the training stage before it; the rules that come after the
        # model file's check are checked when the stage starts
        if planned.exists() or Path(config.checkpoint) != planned or not str(exc).startswith(f"--checkpoint {planned} "):
            raise


def _check_evaluate(args, stage: Stage, cfg: ReproduceConfig) -> None:
    from ..evaluation.cli_args import check_data_flags, check_numbers

    check_numbers(args)
    check_data_flags(args)


def stage_options(stage: Stage, cfg: ReproduceConfig) -> argparse.Namespace:
    """The options ``stage`` will run with: its command line read by that command's own parser and held to
    the command's rules on options (nothing is written, only folders given are looked at). A refusal names
    the ``--KIND-args`` it came from, so a mistake there stops reproduce before any stage runs."""
    parser = _command_parser(stage.kind)
    try:
        args = parser.parse_args(list(stage.argv))
        {"train": _check_train, "generate": _check_generate, "evaluate": _check_evaluate}[stage.kind](args, stage, cfg)
    except DualAnoDiffError as exc:
        raise DualAnoDiffError(_refusal(stage.kind, cfg, str(exc), parser)) from None
    return args


def _refusal(kind: str, cfg: ReproduceConfig, message: str, parser) -> str:
    if message.startswith("unrecognized arguments:"):
        unknown = [a.split("=")[0] for a in message.split(":", 1)[1].split() if a.startswith("--")]
        meant = sorted(o for o in parser._option_string_actions if any(o.startswith(u) for u in unknown))
        if meant:
            message += f" (did you mean {' or '.join(meant)}? options are not abbreviated)"
    given = passed_through(cfg, kind)
    if not given:
        return f"dualanodiff {kind} would refuse the options reproduce gives it: {message}; change that reproduce option"
    flag = f"--{kind}-args"
    return (f"{flag} {shlex.quote(shlex.join(given))}: dualanodiff {kind} would refuse it: {message}; correct {flag} "
            f"(`dualanodiff {kind} --help` lists the options)")


def check_stages(stages: list, cfg: ReproduceConfig) -> None:
    """Every stage's command line as its command will read it, before the first stage runs (and in the dry run)."""
    for stage in stages:
        stage_options(stage, cfg)
