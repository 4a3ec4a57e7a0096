"""LPIPS with the VGG16 backbone (Zhang et al. 2018, version 0.1), written here so that neither the
lpips package nor torchvision is needed; it reads their weight files as they are.

- Backbone: VGG16's convolutional part in torchvision's layout (keys ``features.<i>.weight/bias`` for
  i in 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28; a full ``vgg16-397923af.pth`` works, its
  classifier is ignored). Taps after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
- Linear layers: the lpips package's ``weights/v0.1/vgg.pth`` (keys ``lin<k>.model.1.weight``, shape
  (1, C, 1, 1)).
- Input in [-1, 1], shifted and scaled per channel (shift -0.030, -0.088, -0.188; scale 0.458, 0.448,
  0.450); each tap is unit-normalised over channels (eps 1e-10); the distance is the sum over taps of
  the spatial mean of the linear layer applied to the squared difference.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DualAnoDiffError
from ..torch_files import load_weights_pickle

# VGG16 'D' configuration: channels, 'M' = max-pool
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)   # indices (in features) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    layers, cin = [], 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return nn.Sequential(*layers)


class LPIPSVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def taps(self, x: torch.Tensor) -> list:
        """(B, 3, H, W) in [-1, 1] -> the five channel-normalised feature maps."""
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
                if len(out) == len(TAPS):
                    break
        return out

    def distance_from_taps(self, a: list, b: list) -> torch.Tensor:
        """LPIPS between tap lists (broadcast over the batch): (B,)."""
        total = 0
        for lin, fa, fb in zip(self.lins, a, b):
            total = total + lin((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.distance_from_taps(self.taps(x), self.taps(y))


def _load(path: Path, what: str, flag: str) -> dict:
    state = load_weights_pickle(path, f"{flag} {path}", f"give the {what}")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DualAnoDiffError(f"{flag} {path} does not hold a state dict; give the {what}")
    return state


def load_lpips(vgg_path: Path, lin_path: Path, device="cpu") -> LPIPSVGG:
    """The metric from torchvision's VGG16 weights and the lpips package's v0.1 ``vgg.pth``."""
    model = LPIPSVGG()
    vgg = _load(vgg_path, "VGG16 weights in torchvision's layout (vgg16-397923af.pth)", "--vgg-weights")
    wanted = [k for k in model.features.state_dict()]
    missing = [f"features.{k}" for k in wanted if f"features.{k}" not in vgg]
    if missing:
        raise DualAnoDiffError(f"--vgg-weights {vgg_path} lacks {', '.join(missing[:4])}: give torchvision's VGG16 "
                               "weights (vgg16-397923af.pth)")
    model.features.load_state_dict({k: vgg[f"features.{k}"] for k in wanted})
    lin = _load(lin_path, "lpips package's weights/v0.1/vgg.pth", "--lpips-weights")
    for k, layer in enumerate(model.lins):
        key = f"lin{k}.model.1.weight"
        if key not in lin or tuple(lin[key].shape) != tuple(layer.weight.shape):
            raise DualAnoDiffError(f"--lpips-weights {lin_path} lacks {key} of shape {tuple(layer.weight.shape)}: give "
                                   "the lpips package's weights/v0.1/vgg.pth")
        layer.weight.data.copy_(lin[key])
    return model.to(device).eval().requires_grad_(False)


def to_lpips_input(images: torch.Tensor, size: int = 256) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, size, size) in [-1, 1]."""
    x = images.float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x * 2 - 1
