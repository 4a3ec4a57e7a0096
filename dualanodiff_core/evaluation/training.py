"""Training one detector on one training set, choosing its checkpoint, and scoring images with it.

The reference's schedule: Adam (lr 1e-4), MultiStepLR x0.2 at 80 % and 90 % of training, focal loss,
batches whose samples are each a normal image (empty mask) or a defective pair with probability 1/2,
``epochs`` x ``samples_per_epoch`` samples in all. Every ``select_every`` epochs (and at the end) the
detector is scored on the selection data and the best state is kept: the selection score is the
reference's sum of image AUROC, pixel AUROC, pixel AP and AU-PRO (a metric a split cannot measure
counts 0). ``select="last"`` keeps the final state.

Resumable: with ``state_path`` the full training state (model, optimiser, schedule, data RNG, best
state so far) is written atomically after every selection round, and a run finding it continues
exactly where it stopped.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..io_utils import atomic_write
from .detector import DiscriminativeUNet, focal_loss
from .images import to_float
from .metrics import PRO_LIMIT, all_metrics

SELECT = ("validation", "test", "last")
SELECTION_METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "au_pro")


@dataclass
class DetectorConfig:
    resolution: int = 256
    epochs: int = 200
    samples_per_epoch: int = 500
    batch_size: int = 16
    lr: float = 1e-4
    base_width: int = 64
    select: str = "validation"
    select_every: int = 1          # epochs between selection rounds
    pro_limit: float = PRO_LIMIT

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.samples_per_epoch / self.batch_size))

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def settings(self) -> dict:
        return asdict(self)


@dataclass
class Scored:
    """Images to score with their ground truth: the selection data or the test set."""

    images: torch.Tensor     # (N, 3, H, W) uint8
    masks: torch.Tensor      # (N, 1, H, W) bool
    anomalous: torch.Tensor  # (N,) bool


def selection_score(metrics: dict) -> float:
    return float(sum(0.0 if math.isnan(metrics[k]) else metrics[k] for k in SELECTION_METRICS))


def score_maps(model: DiscriminativeUNet, images: torch.Tensor, device, batch_size: int = 16) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, H, W) float32 anomaly maps on the CPU (model in eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            out.append(model.anomaly_map(to_float(images[start:start + batch_size]).to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, *images.shape[-2:])


def _batch(source, normals: torch.Tensor, n: int, gen: torch.Generator) -> tuple:
    """n samples: each normal (empty mask) or from ``source`` with probability 1/2."""
    defective = torch.rand(n, generator=gen) < 0.5
    k = int(defective.sum())
    size = normals.shape[-2:]
    images = torch.empty(n, 3, *size)
    masks = torch.zeros(n, 1, *size)
    if n - k:
        pick = torch.randint(normals.shape[0], (n - k,), generator=gen)
        images[~defective] = to_float(normals[pick])
    if k:
        images[defective], masks[defective] = source.draw(k, gen)
    return images, masks


def _state(model, optimizer, scheduler, gen, step, best, history) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "rng": gen.get_state(), "step": step, "best_score": best[0], "best_step": best[1],
            "best_model": best[2], "history": history}


def train_detector(source, normals: torch.Tensor, selection: Scored | None, cfg: DetectorConfig, seed: int,
                   device, state_path: Path | None = None, progress: str | None = None) -> tuple:
    """Train one detector. Returns (best state_dict on the CPU, info dict)."""
    from tqdm.auto import tqdm

    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiscriminativeUNet(cfg.base_width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    total, per_epoch = cfg.total_steps, cfg.steps_per_epoch
    milestones = [int(total * 0.8), int(total * 0.9)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.2)
    gen = torch.Generator().manual_seed(seed)
    step, best, history = 0, (-math.inf, 0, None), []
    if state_path is not None and Path(state_path).is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["rng"])
        step, history = state["step"], list(state["history"])
        best = (state["best_score"], state["best_step"], state["best_model"])
    select = cfg.select if selection is not None else "last"
    model.train()
    bar = tqdm(total=total, initial=step, desc=progress or "detector", unit="step", leave=False)
    while step < total:
        images, masks = _batch(source, normals, cfg.batch_size, gen)
        loss = focal_loss(model(images.to(device)), masks.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        round_end = step % (per_epoch * cfg.select_every) == 0 or step == total
        if round_end and select != "last":
            maps = score_maps(model, selection.images, device, cfg.batch_size)
            metrics = all_metrics(maps, selection.masks, selection.anomalous, cfg.pro_limit)
            score = selection_score(metrics)
            history.append({"step": step, "score": round(score, 6)})
            if score > best[0]:
                best = (score, step, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        if round_end and state_path is not None and step < total:
            state = _state(model, optimizer, scheduler, gen, step, best, history)
            atomic_write(Path(state_path), lambda tmp: torch.save(state, tmp), overwrite=True)
    bar.close()
    if select == "last" or best[2] is None:
        chosen = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        best = (math.nan, total, chosen)
    info = {"selected_step": best[1], "selected_score": None if math.isnan(best[0]) else round(best[0], 6),
            "selection": select, "steps": total, "history": history,
            "train_seconds": round(time.perf_counter() - began, 1)}
    return copy.deepcopy(best[2]), info


def load_detector(state: dict, base_width: int, device) -> DiscriminativeUNet:
    model = DiscriminativeUNet(base_width)
    model.load_state_dict(state)
    return model.to(device).eval()
