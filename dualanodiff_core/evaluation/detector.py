"""The localization model of the paper's downstream protocol: a DRAEM-style discriminative U-Net.

Six encoder stages (two 3x3 conv + BatchNorm + ReLU each, max-pooled between them), widths
w, 2w, 4w, 8w, 8w, 8w; five decoder stages (bilinear x2 upsampling and a 3x3 conv to 8w, 4w, 2w, w, w,
then two 3x3 convs on the concatenation with the encoder stage of the same size); a final 3x3 conv to two classes (normal, anomalous). The input is an RGB
image in [0, 1]; its side must be a multiple of 32. The anomaly map is the softmax probability of
class 1. Trained with the focal loss (gamma 2) on the softmax, as DRAEM and the reference do.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

DOWNSAMPLING = 32  # five max-pools


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                         nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DiscriminativeUNet(nn.Module):
    def __init__(self, base_width: int = 64, in_channels: int = 3, classes: int = 2):
        super().__init__()
        w = base_width
        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList()
        cin = in_channels
        for cout in widths:
            self.encoder.append(_double_conv(cin, cout))
            cin = cout
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        cin = widths[-1]
        for skip, out in zip(reversed(widths[:-1]), (8 * w, 4 * w, 2 * w, w, w)):  # skips 8w, 8w, 4w, 2w, w
            self.up.append(_up_conv(cin, out))
            self.merge.append(_double_conv(out + skip, out))
            cin = out
        self.head = nn.Conv2d(cin, classes, 3, padding=1)
        self.base_width = base_width
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 2, H, W) logits."""
        if x.shape[-1] % DOWNSAMPLING or x.shape[-2] % DOWNSAMPLING:
            raise ValueError(f"image side must be a multiple of {DOWNSAMPLING}, got {tuple(x.shape[-2:])}")
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, H, W) probability of the anomalous class."""
        return torch.softmax(self(images).float(), dim=1)[:, 1]


def _init_weights(m: nn.Module) -> None:
    """DRAEM's initialisation: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and shift 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def focal_loss(logits: torch.Tensor, masks: torch.Tensor, gamma: float = 2.0, eps: float = 1e-5) -> torch.Tensor:
    """Mean focal loss -(1 - p_t)^gamma log(p_t) of (B, 2, H, W) logits against (B, 1, H, W) 0/1 masks,
    with p_t (the probability of the true class) kept off 0 by ``eps``."""
    prob = torch.softmax(logits.float(), dim=1)
    target = (masks > 0.5).long()
    pt = prob.gather(1, target).clamp(eps, 1.0)
    return (-(1 - pt) ** gamma * torch.log(pt)).mean()
