"""From checked files to what :func:`~.run.evaluate` takes: the real data and the training sets in memory."""
from __future__ import annotations

import torch

from ..errors import DualAnoDiffError
from .baselines import CropPaste, real_only
from .images import load_images, natural_key
from .run import EvalData, TrainingSet
from .sources import MixedPool, PairPool, Pairs, load_pairs
from .split import Category


def load_category(category: Category, size: int) -> EvalData:
    test = Pairs.load([(t.image, t.mask, t.defect) for t in category.test], size)
    test.names = [t.name for t in category.test]
    shots = Pairs.load([(s.image, s.mask, s.defect) for s in category.shots], size)
    empty = [str(s.mask) for s, m in zip(category.shots, shots.masks) if not m.any()]
    if empty:
        raise DualAnoDiffError(f"few-shot masks empty at {size} px: {', '.join(empty[:5])}; check these masks")
    return EvalData(category.name, list(category.defects), test, load_images(category.normals, size), shots,
                    [(t.image, t.mask) for t in category.test], list(category.notes))


def training_sets(data: EvalData, sources: list, baselines: list, size: int, max_pairs: int = 0,
                  augment_synthetic: bool = False, normals: torch.Tensor | None = None,
                  mix_real: float | None = None) -> tuple:
    """(TrainingSets in order: synthetic and placed sets, then baselines, then with ``mix_real`` (the
    shots' share of each batch's defective samples) every set but real-only again mixed with the few
    real shots as ``real+NAME``; {set name: Pairs} of the synthetic sets). ``normals``: the normal
    images crop-and-paste pastes onto (the training normals, without the ones held out for checkpoint
    selection; default all)."""
    sets, loaded = [], {}
    for source in sources:
        if max_pairs:
            source.pairs = {d: sorted(v, key=lambda pair: natural_key(pair[0]))[:max_pairs] for d, v in source.pairs.items()}
        pairs, dropped = load_pairs(source, size)
        if len(pairs) == 0:
            raise DualAnoDiffError(f"synthetic set {source.name} ({source.root}): every mask is empty at {size} px, so "
                                   "there is no defect to learn from; check the masks (or the mask threshold of generate)")
        notes = list(source.notes)
        if dropped:
            notes.append(f"{dropped} pairs with empty masks left out")
        description = {**source.fingerprint(), "used_pairs": len(pairs), "empty_masks_dropped": dropped,
                       "augmented": augment_synthetic}
        sets.append(TrainingSet(source.name, source.kind, PairPool(pairs, augment_synthetic), description, notes))
        loaded[source.name] = pairs
    shots = {"shots": len(data.shots), "shot_names": list(data.shots.names)}
    if "real-only" in baselines or mix_real:
        real = TrainingSet("real-only", "real-only", real_only(data.shots), shots)
        sets.append(real)
    if "crop-paste" in baselines:
        sets.append(TrainingSet("crop-paste", "crop-paste", CropPaste(data.shots, data.normals if normals is None else normals), shots))
    if mix_real:
        sets += [TrainingSet(f"real+{ts.name}", "mixed", MixedPool(real.source, ts.source, mix_real),
                             {"real_share": mix_real, "mixed_with": ts.name, "mixed_kind": ts.kind, **ts.description},
                             list(ts.notes)) for ts in sets if ts.kind != "real-only"]
    return sets, loaded


def tensor_pairs(images, masks, defect: str = "defect") -> Pairs:
    """Pairs from arrays in memory: images (N, H, W, 3) float in [0, 1] or uint8, masks (N, H, W) bool."""
    import numpy as np

    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)
    t = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    m = torch.from_numpy(np.asarray(masks, dtype=bool))[:, None]
    return Pairs(t, m, [defect] * len(t), [f"{defect}/{i:03d}" for i in range(len(t))])
