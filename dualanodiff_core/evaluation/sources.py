"""Where the defective half of each training batch comes from: a pool of (image, mask) pairs in memory.

Every draw uses the given ``torch.Generator``, so a detector's training data is a function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .images import load_images, load_masks, to_float


@dataclass
class Pairs:
    """Pairs at the evaluation resolution: uint8 (N, 3, H, W) images, bool (N, 1, H, W) masks."""

    images: torch.Tensor
    masks: torch.Tensor
    defects: list = field(default_factory=list)
    names: list = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, keep) -> "Pairs":
        keep = torch.as_tensor(keep, dtype=torch.bool)
        idx = torch.nonzero(keep).view(-1).tolist()
        return Pairs(self.images[keep], self.masks[keep], [self.defects[i] for i in idx] if self.defects else [],
                     [self.names[i] for i in idx] if self.names else [])

    @staticmethod
    def load(items: list, size: int) -> "Pairs":
        """``items``: (image path, mask path, defect) triples."""
        return Pairs(load_images([i for i, _, _ in items], size), load_masks([m for _, m, _ in items], size),
                     [d for _, _, d in items], [str(i) for i, _, _ in items])


def augment(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> tuple:
    """Random horizontal and vertical flips (shared by image and mask) and brightness/contrast jitter of
    up to 10 %, per sample. Float images in [0, 1]."""
    n = images.shape[0]
    for dim in (-1, -2):
        flip = torch.rand(n, generator=gen) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(dim), images)
        masks = torch.where(flip.view(-1, 1, 1, 1), masks.flip(dim), masks)
    gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    shift = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * gain + mean + shift).clamp(0, 1)
    return images, masks


class PairPool:
    """Draws pairs uniformly at random, optionally augmented."""

    kind = "pairs"

    def __init__(self, pairs: Pairs, augmented: bool = False):
        if len(pairs) == 0:
            raise ValueError("a pair pool needs at least one pair")
        self.pairs, self.augmented = pairs, augmented

    def draw(self, n: int, gen: torch.Generator) -> tuple:
        """(n, 3, H, W) float images in [0, 1] and (n, 1, H, W) float 0/1 masks."""
        return self.draw_labelled(n, gen)[:2]

    def draw_labelled(self, n: int, gen: torch.Generator) -> tuple:
        """As :meth:`draw` (the same random numbers), plus each sample's defect type."""
        idx = torch.randint(len(self.pairs), (n,), generator=gen)
        images, masks = to_float(self.pairs.images[idx]), self.pairs.masks[idx].float()
        images, masks = augment(images, masks, gen) if self.augmented else (images, masks)
        return images, masks, [self.pairs.defects[i] if self.pairs.defects else "defect" for i in idx.tolist()]


def load_pairs(source, size: int) -> tuple:
    """A :class:`~.synthetic_sets.SetSource` read at ``size``; pairs whose mask is empty at this size are
    dropped (a defect image without a marked defect teaches the detector that defects are normal).
    Returns (Pairs, number dropped)."""
    items = [(i, m, d) for d, pairs in source.pairs.items() for i, m in pairs]
    pairs = Pairs.load(items, size)
    keep = pairs.masks.flatten(1).any(1)
    return pairs.select(keep), int((~keep).sum())


class MixedPool:
    """The few real shots kept in every batch beside another source: of each draw of n defective samples,
    ``real_share`` x n come from the shots (augmented, as the real-only baseline; rounded up or down at
    random so that the share holds exactly on average), the rest from ``other``."""

    kind = "mixed"

    def __init__(self, real: PairPool, other, real_share: float):
        if not 0 < real_share < 1:
            raise ValueError("real_share must lie in (0, 1)")
        self.real, self.other, self.real_share = real, other, real_share

    def draw(self, n: int, gen: torch.Generator) -> tuple:
        return self.draw_labelled(n, gen)[:2]

    def draw_labelled(self, n: int, gen: torch.Generator) -> tuple:
        k = min(n, int(self.real_share * n + float(torch.rand((), generator=gen))))
        parts = [source.draw_labelled(m, gen) for source, m in ((self.real, k), (self.other, n - k)) if m]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), [d for p in parts for d in p[2]]
