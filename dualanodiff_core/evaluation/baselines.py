"""The two baselines a sceptic tries before generating anything, built from the same few real shots.

- ``real-only``: the few-shot real pairs themselves, augmented (flips, brightness/contrast jitter).
- ``crop-paste``: a shot's defect pixels (cut by its mask) pasted onto a normal training image at a
  random position inside the object, a random scale (0.75-1.25) and a random rotation. The object is
  estimated from the normal image itself: pixels whose colour is far from the image border's median
  colour, closed, hole-filled and kept as the largest region; when that covers under 5 % or over 95 %
  of the image (textures, objects filling the frame) the whole image counts as the object. A
  placement is accepted when at least 90 % of the pasted defect lands on the object (up to 16 tries,
  then the best one).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..masks.extract import clean_mask, label_components
from .images import to_float
from .sources import PairPool, Pairs

SCALE = (0.75, 1.25)
TRIES = 16
INSIDE = 0.9


def real_only(shots: Pairs) -> PairPool:
    return PairPool(shots, augmented=True)


def object_masks(normals: torch.Tensor, border: int = 4) -> torch.Tensor:
    """(N, 3, H, W) uint8 normal images -> (N, H, W) bool estimate of the object (see module docstring)."""
    x = to_float(normals)
    n, _, h, w = x.shape
    frame = torch.ones(h, w, dtype=torch.bool)
    frame[border:h - border, border:w - border] = False
    edge = x[:, :, frame]                                   # (N, 3, P)
    background = edge.median(dim=2).values[:, :, None, None]
    distance = (x - background).abs().amax(dim=1)           # (N, H, W)
    spread = torch.quantile(distance[:, frame], 0.95, dim=1).view(n, 1, 1)
    fg = distance > torch.clamp(2 * spread, min=0.08)
    fg = clean_mask(fg[:, None].float(), open_px=1, close_px=3, holes=True, min_area=16)[:, 0] > 0.5
    lab = label_components(fg, 8)
    sizes = torch.bincount(lab.view(-1), minlength=1)
    sizes[0] = 0
    best = torch.zeros(n, dtype=torch.int64)
    for i in range(n):  # the largest region of each image (one bincount pass above; N is small)
        ids = lab[i][fg[i]]
        if ids.numel():
            best[i] = ids[sizes[ids].argmax()]
    fg = (lab == best.view(n, 1, 1)) & fg
    share = fg.float().mean(dim=(1, 2))
    whole = (share < 0.05) | (share > 0.95)
    fg[whole] = True
    return fg


class CropPaste:
    """Draws crop-and-paste samples: a random shot's defect on a random normal image."""

    kind = "crop-paste"

    def __init__(self, shots: Pairs, normals: torch.Tensor, objects: torch.Tensor | None = None):
        if len(shots) == 0:
            raise ValueError("crop-and-paste needs at least one few-shot pair")
        self.shots, self.normals = shots, normals
        self.objects = object_masks(normals) if objects is None else objects
        m = shots.masks[:, 0].float()
        h, w = m.shape[-2:]
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h).view(1, h, 1)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w).view(1, 1, w)
        area = m.sum(dim=(1, 2)).clamp_min(1)
        self.centres = torch.stack([(m * xs).sum(dim=(1, 2)) / area, (m * ys).sum(dim=(1, 2)) / area], dim=1)

    def _warp(self, image, mask, centre, target, angle, scale):
        """Rotate/scale the shot about its defect centre and move that centre to ``target`` (normalised)."""
        k = target.shape[0]
        cos, sin = torch.cos(angle), torch.sin(angle)
        a = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1) / scale.view(k, 1, 1)
        b = centre.view(1, 2) - (a @ target.view(k, 2, 1)).view(k, 2)
        theta = torch.cat([a, b.view(k, 2, 1)], dim=2)
        grid = F.affine_grid(theta, (k, 1, *image.shape[-2:]), align_corners=False)
        pasted = F.grid_sample(image.expand(k, -1, -1, -1), grid, mode="bilinear", align_corners=False)
        region = F.grid_sample(mask.expand(k, -1, -1, -1), grid, mode="bilinear", align_corners=False) > 0.5
        return pasted, region

    def draw(self, n: int, gen: torch.Generator) -> tuple:
        return self.draw_labelled(n, gen)[:2]

    def draw_labelled(self, n: int, gen: torch.Generator) -> tuple:
        """As :meth:`draw` (the same random numbers), plus each sample's defect type (its shot's)."""
        h, w = self.normals.shape[-2:]
        images, masks, defects = [], [], []
        for _ in range(n):
            s = int(torch.randint(len(self.shots), (1,), generator=gen))
            defects.append(self.shots.defects[s] if self.shots.defects else "defect")
            j = int(torch.randint(self.normals.shape[0], (1,), generator=gen))
            obj = self.objects[j]
            where = torch.nonzero(obj)
            pick = where[torch.randint(where.shape[0], (TRIES,), generator=gen)].float()
            target = torch.stack([(pick[:, 1] + 0.5) / w * 2 - 1, (pick[:, 0] + 0.5) / h * 2 - 1], dim=1)
            angle = torch.rand(TRIES, generator=gen) * 2 * math.pi
            scale = SCALE[0] + torch.rand(TRIES, generator=gen) * (SCALE[1] - SCALE[0])
            pasted, region = self._warp(to_float(self.shots.images[s])[None], self.shots.masks[s][None].float(),
                                        self.centres[s], target, angle, scale)
            area = region.flatten(1).sum(1).clamp_min(1)
            inside = (region[:, 0] & obj).flatten(1).sum(1) / area
            ok = (inside >= INSIDE) & (region.flatten(1).sum(1) > 0)
            t = int(torch.nonzero(ok)[0]) if ok.any() else int(inside.argmax())
            m = region[t].float()
            base = to_float(self.normals[j])
            images.append(base * (1 - m) + pasted[t] * m)
            masks.append(m)
        return torch.stack(images), torch.stack(masks), defects
