"""Device hours of a reproduction, from step times measured here (or given by ``--step-seconds``).

Three step times make every stage's cost: one training step (``--pairs-per-step`` pairs), one sampler
call (a batch of pairs with classifier-free guidance), one detector step. Measured on the device this
runs on, with the configured base model and resolution, after warm-up steps. Sizes and counts are the
ones each stage's command will run with: its command line as that command reads it, the options passed
through with ``--train-args``, ``--generate-args``, ``--evaluate-args`` included.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..errors import DualAnoDiffError
from .plan import ReproduceConfig, Stage, stage_options

KINDS = ("train", "sample", "detector")


@dataclass
class StepSeconds:
    train: float
    sample: float
    detector: float
    source: str          # where the numbers come from, for the plan's header


def parse_step_seconds(text: str) -> StepSeconds:
    """``train=2.5,sample=0.2,detector=0.05`` (seconds per step, all three)."""
    values = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            values[key.strip()] = float(value)
        except ValueError:
            raise DualAnoDiffError(f"--step-seconds {text!r}: write train=S,sample=S,detector=S (seconds)") from None
    if sorted(values) != sorted(KINDS) or any(not v > 0 for v in values.values()):
        raise DualAnoDiffError(f"--step-seconds {text!r}: give train=, sample= and detector=, each above 0")
    return StepSeconds(values["train"], values["sample"], values["detector"], "given by --step-seconds")


def _timed(step, warmup: int, repeats: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - began) / repeats


def measure(cfg: ReproduceConfig, stages: list, cpu: bool = False, repeats: int = 3) -> StepSeconds:
    """Time the three steps on this machine with the real models and data of the plan's first defect type,
    each at the sizes its stage will run with."""
    from accelerate import Accelerator

    from ..evaluation.cli_args import detector_config
    from ..evaluation.detector import DiscriminativeUNet, focal_loss
    from ..formats.base_model import load_base_model
    from ..runtime.sampling import latent_scale
    from ..training.train_args import parse_args
    from ..training.trainer import DualTrainer

    first_train, gen, ev = (next(s for s in stages if s.kind == kind) for kind in ("train", "generate", "evaluate"))
    gen, det_cfg = stage_options(gen, cfg), detector_config(stage_options(ev, cfg))
    # later options win: the timing run writes nothing, but gets a folder of its own
    args = parse_args([*first_train.argv, "--output-dir", str(cfg.output_dir / "timing"), "--validate-every", "0",
                       *(["--cpu"] if cpu else [])])
    acc = Accelerator(cpu=cpu)
    trainer = DualTrainer(args, acc, load_base_model(args.base_model))
    step = iter(range(10 ** 6))
    train = _timed(lambda: trainer.train_step(next(step)), 1, repeats, acc.device)

    side = gen.resolution // latent_scale(trainer.vae)
    rows = 2 * 2 * gen.batch_size  # pairs x (global, anomaly) x (uncond, cond)
    latents = torch.randn(rows, trainer.dual.unet.config.in_channels, side, side, device=acc.device)
    t = torch.full((rows,), 500, device=acc.device)
    context = torch.randn(rows, 77, trainer.dual.unet.config.cross_attention_dim, device=acc.device)
    trainer.dual.unet.eval()

    def sample():
        with torch.no_grad():
            trainer.dual(latents, t, context)

    sample_s = _timed(sample, 1, repeats, acc.device)
    del trainer
    model = DiscriminativeUNet(det_cfg.base_width).to(acc.device)
    opt = torch.optim.Adam(model.parameters(), lr=det_cfg.lr)
    x = torch.randn(det_cfg.batch_size, 3, det_cfg.resolution, det_cfg.resolution, device=acc.device)
    y = (torch.rand(det_cfg.batch_size, 1, det_cfg.resolution, det_cfg.resolution, device=acc.device) > 0.9).float()

    def detector():
        loss = focal_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    det = _timed(detector, 1, repeats, acc.device)
    return StepSeconds(train, sample_s, det, f"measured on {acc.device.type} ({repeats} steps each after warm-up)")


def detector_count(evaluate_options) -> int:
    """Detectors an evaluation trains: one per set and seed. Sets: the synthetic and placed ones and the
    baselines, and with ``--mix-real`` each of them but real-only again mixed with the shots (real-only
    joining if it is not a baseline)."""
    o = evaluate_options
    baselines = [b for b in o.baselines if b != "none"]
    given = len(o.synthetic) + len(o.placed)
    sets = given + len(baselines)
    if o.mix_real is not None:
        sets += given + ("crop-paste" in baselines) + ("real-only" not in baselines)
    return sets * len(o.seeds)


def stage_hours(stage: Stage, cfg: ReproduceConfig, seconds: StepSeconds) -> float:
    from ..evaluation.cli_args import detector_config

    opts = stage_options(stage, cfg)
    if stage.kind == "train":
        return opts.steps * seconds.train / 3600
    if stage.kind == "generate":
        return math.ceil(opts.num_pairs / opts.batch_size) * opts.steps * seconds.sample / 3600
    return detector_count(opts) * detector_config(opts).total_steps * seconds.detector / 3600
