"""Inception v3 as the Inception Score uses it (the 2015-12-05 TensorFlow graph ported to PyTorch, as in
pytorch-fid and torch-fidelity), written here so that torchvision is not needed.

It reads ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid) or
``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity) unchanged: module names follow
torchvision's Inception3 (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ...,
``fc.weight`` with 1008 classes). Differences from torchvision's network, as in those ports: average
pools ignore padding, the last block max-pools its pool branch, batch-norm eps is 1e-3.

Input: uint8 images, resized to 299 x 299 with TensorFlow 1's bilinear rule (source = destination x
scale, no half-pixel offset), mapped by (x - 128) / 128. The score uses the logits without the fc bias
(torch-fidelity's ``logits_unbiased``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DualAnoDiffError
from ..torch_files import load_weights_pickle

SIZE = 299
CLASSES = 1008


class Conv(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):  # 35 x 35
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, kernel_size=1)
        self.branch5x5_1 = Conv(cin, 48, kernel_size=1)
        self.branch5x5_2 = Conv(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, padding=1)
        self.branch_pool = Conv(cin, pool, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class BlockB(nn.Module):  # 35 -> 17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):  # 17 x 17
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, kernel_size=1)
        self.branch7x7_1 = Conv(cin, c7, kernel_size=1)
        self.branch7x7_2 = Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class BlockD(nn.Module):  # 17 -> 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = Conv(cin, 192, kernel_size=1)
        self.branch3x3_2 = Conv(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = Conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        d = x
        for k in range(1, 5):
            d = getattr(self, f"branch7x7x3_{k}")(d)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), d, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # 8 x 8
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, kernel_size=1)
        self.branch3x3_1 = Conv(cin, 384, kernel_size=1)
        self.branch3x3_2a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = Conv(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class InceptionV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = Conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = Conv(80, 192, kernel_size=3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, CLASSES)

    def logits_unbiased(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> (B, 1008) logits without the fc bias."""
        x = (resize_tf1(images.float(), SIZE) - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        x = x.mean(dim=(2, 3))
        return x @ self.fc.weight.T


def resize_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1 does without align_corners: source = destination * (in / out)."""
    def axis(n_in: int):
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo.to(x.device), hi.to(x.device), (src - lo).to(x.dtype).to(x.device)

    h, w = x.shape[-2:]
    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    rows = x[..., y0, :] * (1 - fy.view(-1, 1)) + x[..., y1, :] * fy.view(-1, 1)
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


def load_inception(path: Path, device="cpu") -> InceptionV3:
    model = InceptionV3()
    state = load_weights_pickle(path, f"--inception-weights {path}", "give pt_inception-2015-12-05-6726825d.pth "
                                "or weights-inception-2015-12-05-6726825d.pth")
    wanted = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    bad = [k for k, v in wanted.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise DualAnoDiffError(f"--inception-weights {path} lacks {', '.join(bad[:4])} (or their shapes differ): give "
                               "pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or weights-inception-2015-12-05-"
                               "6726825d.pth (torch-fidelity)")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return model.to(device).eval().requires_grad_(False)


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 2020) -> tuple:
    """(mean, std) over ``splits`` of exp(E[KL(p(y|x) || p(y))]) from (N, C) logits, the samples shuffled
    with numpy's RandomState(``seed``) first (torch-fidelity's defaults)."""
    import numpy as np

    n = logits.shape[0]
    splits = max(1, min(splits, n))
    order = torch.from_numpy(np.random.RandomState(seed).permutation(n))
    x = logits[order].double()
    p, log_p = x.softmax(1), x.log_softmax(1)
    scores = []
    for i in range(splits):
        a, b = i * n // splits, (i + 1) * n // splits
        q = p[a:b].mean(0, keepdim=True)
        scores.append(float((p[a:b] * (log_p[a:b] - q.log())).sum(1).mean().exp()))
    mean = sum(scores) / len(scores)
    std = (sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5
    return mean, std
