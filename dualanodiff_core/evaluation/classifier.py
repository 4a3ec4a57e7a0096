"""Defect-type classification, the paper's third downstream task: per category, a ResNet-34 trained on a
set's defective images of every defect type (the label is the type), scored by its accuracy on the real
test defects.

The network is ResNet-34 as published (basic blocks 3-4-6-3, widths 64-512) with module names that load
torchvision's ImageNet file (``resnet34-b627a593.pth``) unchanged, its 1000-way head replaced by one of
the category's types; without a weights file it is trained from scratch (the report says which). Inputs
are normalised with ImageNet's mean and spread in both cases. Training: Adam, cross-entropy, ``steps``
batches drawn from the set by the given seed (augmented as the set's detector batches are), then the
batch-norm statistics measured again with the final weights (:func:`recalibrate`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DualAnoDiffError
from ..torch_files import load_weights_pickle
from .images import to_float

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
WEIGHTS_HINT = "give torchvision's ResNet-34 ImageNet weights (resnet34-b627a593.pth), or leave the flag out to train from scratch"


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet34(nn.Module):
    LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))

    def __init__(self, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (width, blocks, stride) in enumerate(self.LAYERS, start=1):
            setattr(self, f"layer{i}", nn.Sequential(*[BasicBlock(cin if b == 0 else width, width, stride if b == 0 else 1)
                                                        for b in range(blocks)]))
            cin = width
        self.fc = nn.Linear(512, classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        """(N, 3, H, W) float in [0, 1] -> (N, classes) logits."""
        x = F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        x = F.max_pool2d(x, 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def load_imagenet_weights(model: ResNet34, path: Path) -> None:
    """Every weight but the head from torchvision's ResNet-34 file; a clear error naming what is missing."""
    state = load_weights_pickle(path, f"--classifier-weights {path}", WEIGHTS_HINT)
    if not isinstance(state, dict):
        raise DualAnoDiffError(f"--classifier-weights {path} does not hold a state dict; {WEIGHTS_HINT}")
    wanted = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    bad = [k for k, v in wanted.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise DualAnoDiffError(f"--classifier-weights {path} lacks {', '.join(bad[:3])} (or their shapes differ), so it "
                               f"is no ResNet-34; {WEIGHTS_HINT}")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)


@dataclass
class ClassifierConfig:
    steps: int = 500
    batch_size: int = 16
    lr: float = 1e-4
    calibration_batches: int = 8
    weights: Path | None = None

    def settings(self) -> dict:
        return {**asdict(self), "weights": None if self.weights is None else Path(self.weights).name,
                "pretrained": self.weights is not None}


def train_classifier(source, defects: list, cfg: ClassifierConfig, seed: int, device) -> ResNet34:
    """A ResNet-34 over ``defects`` trained on ``source.draw_labelled`` batches (the seed fixes everything)."""
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet34(len(defects))
    if cfg.weights is not None:
        load_imagenet_weights(model, cfg.weights)
    model = model.to(device).train()
    index = {d: i for i, d in enumerate(defects)}
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(cfg.steps), desc="classifier", unit="step", leave=False):
        images, _, types = source.draw_labelled(cfg.batch_size, gen)
        labels = torch.tensor([index[t] for t in types], device=device)
        loss = F.cross_entropy(model(images.to(device)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    recalibrate(model, source, gen, cfg.calibration_batches, cfg.batch_size, device)
    return model.eval()


def recalibrate(model: nn.Module, source, gen: torch.Generator, batches: int, batch_size: int, device) -> None:
    """Batch-norm statistics measured anew with the final weights (an equal-weight average over ``batches``
    batches of the training data). The running averages trail the weights: measured in the tests' two-type
    category, a ResNet-34 after 40 steps told the types apart in train mode and called every test defect
    one type in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(source.draw_labelled(batch_size, gen)[0].to(device))
    for m in norms:
        m.momentum = 0.1


def predict(model: ResNet34, images: torch.Tensor, device, batch_size: int = 32) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N,) predicted class indices."""
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            out.append(model(to_float(images[start:start + batch_size]).to(device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(predicted: list, actual: list) -> dict:
    """Share of test defects given their own type, overall and per type (types as names)."""
    if len(predicted) != len(actual) or not actual:
        raise ValueError("one prediction per test defect, at least one")
    per = {}
    for p, a in zip(predicted, actual):
        hits, total = per.get(a, (0, 0))
        per[a] = (hits + (p == a), total + 1)
    return {"accuracy": sum(h for h, _ in per.values()) / len(actual),
            "per_defect": {d: h / t for d, (h, t) in sorted(per.items())}}
