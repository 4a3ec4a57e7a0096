"""Device hours of a reproduction, from step times measured here (or given by ``--step-seconds``).

Three step times make every stage's cost: one training step (``--pairs-per-step`` pairs), one sampler
call (a batch of pairs with classifier-free guidance), one detector step. Measured on the device this
runs on, with the configured base model and resolution, after warm-up steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..errors import DualAnoDiffError
from .plan import ReproduceConfig, Stage

KINDS = ("train", "sample", "detector")
GENERATE_BATCH = 4       # generate's default --batch-size
DETECTOR_SETS = 3        # DualAnoDiff, real-only, crop-and-paste


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


def measure(cfg: ReproduceConfig, first_train: Stage, cpu: bool = False, repeats: int = 3) -> StepSeconds:
    """Time the three steps on this machine with the real models and data of ``first_train``."""
    from accelerate import Accelerator

    from ..formats.base_model import load_base_model
    from ..runtime.sampling import latent_scale
    from ..evaluation.detector import DiscriminativeUNet, focal_loss
    from ..evaluation.training import DetectorConfig
    from ..training.train_args import parse_args
    from ..training.trainer import DualTrainer

    # later options win: the timing run writes nothing, but gets a folder of its own
    args = parse_args([*first_train.argv, "--output-dir", str(cfg.output_dir / "timing"), "--validate-every", "0",
                       *(["--cpu"] if cpu else [])])
    acc = Accelerator(cpu=cpu)
    trainer = DualTrainer(args, acc, load_base_model(args.base_model))
    step = iter(range(10 ** 6))
    train = _timed(lambda: trainer.train_step(next(step)), 1, repeats, acc.device)

    side = cfg.resolution // latent_scale(trainer.vae)
    rows = 2 * 2 * GENERATE_BATCH  # pairs x (global, anomaly) x (uncond, cond)
    latents = torch.randn(rows, trainer.dual.unet.config.in_channels, side, side, device=acc.device)
    t = torch.full((rows,), 500, device=acc.device)
    context = torch.randn(rows, 77, trainer.dual.unet.config.cross_attention_dim, device=acc.device)
    trainer.dual.unet.eval()

    def sample():
        with torch.no_grad():
            trainer.dual(latents, t, context)

    sample_s = _timed(sample, 1, repeats, acc.device)
    del trainer
    det_cfg = DetectorConfig()
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


def stage_hours(stage: Stage, cfg: ReproduceConfig, seconds: StepSeconds) -> float:
    if stage.kind == "train":
        return cfg.train_steps * seconds.train / 3600
    if stage.kind == "generate":
        return math.ceil(cfg.pairs / GENERATE_BATCH) * cfg.sample_steps * seconds.sample / 3600
    from ..evaluation.training import DetectorConfig

    det = DetectorConfig()
    return DETECTOR_SETS * det.total_steps * seconds.detector / 3600
