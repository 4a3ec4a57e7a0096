"""Generation metrics of a synthetic set, as the paper reports them (both optional; weights are local files).

- IC-LPIPS (diversity), per defect type: the few-shot real images of that type are the cluster centres;
  every generated image joins the centre nearest by LPIPS; in each cluster up to 50 members (a seeded
  random choice) are compared pairwise and their mean LPIPS taken; the type's value is the mean over
  clusters with at least two members. LPIPS-VGG on 256 px images in [-1, 1].
- IS (Inception Score), per defect type over its generated images (10 splits, torch-fidelity's
  shuffle), as the reference computes it with torch-fidelity.

A set's value is the mean over its defect types; metrics.json keeps each type's.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from .. import checks
from ..errors import DualAnoDiffError
from .images import load_image

VGG_NAMES = ("vgg16-397923af.pth", "vgg16.pth")
LPIPS_NAMES = ("vgg.pth", "lpips_vgg.pth")
INCEPTION_NAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
CLUSTER_SIZE = 50


def _first(folder: Path, names: tuple) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def resolve_weights(lpips: Path | None, vgg: Path | None, inception: Path | None, folder: Path | None) -> dict:
    """Which generation metrics run and with which files: {"lpips": (vgg, lin) | absent, "inception": path |
    absent}. A metric asked for whose file is missing is an error naming the file."""
    if folder is not None:
        checks.input_dir(folder, "--metric-weights")
        vgg = vgg or _first(folder, VGG_NAMES)
        lpips = lpips or _first(folder, LPIPS_NAMES)
        inception = inception or _first(folder, INCEPTION_NAMES)
        if not (vgg and lpips) and not inception:
            raise DualAnoDiffError(f"--metric-weights {folder} holds none of the metric weight files: put "
                                   f"{VGG_NAMES[0]} (torchvision VGG16) with {LPIPS_NAMES[0]} (lpips v0.1) for IC-LPIPS "
                                   f"and/or {INCEPTION_NAMES[0]} for IS there")
    out = {}
    if lpips or vgg:
        if not lpips:
            raise DualAnoDiffError("IC-LPIPS needs the LPIPS linear layers too: --lpips-weights vgg.pth (the lpips "
                                   "package's weights/v0.1/vgg.pth)")
        if not vgg:
            raise DualAnoDiffError("IC-LPIPS needs the VGG16 backbone too: --vgg-weights vgg16-397923af.pth "
                                   "(torchvision's ImageNet VGG16 weights)")
        out["lpips"] = (checks.input_file(vgg, "--vgg-weights"), checks.input_file(lpips, "--lpips-weights"))
    if inception:
        out["inception"] = checks.input_file(inception, "--inception-weights")
    return out


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _stack(images: list) -> torch.Tensor:
    return torch.stack(images) if isinstance(images[0], torch.Tensor) else torch.stack([torch.as_tensor(i) for i in images])


def _read(item) -> torch.Tensor:
    """An image given as a path (read at its own size) or as a uint8 (3, H, W) tensor."""
    if isinstance(item, torch.Tensor):
        return item
    import numpy as np
    from PIL import Image

    with Image.open(item) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def _lpips_batch(items: list, device, size: int = 256) -> torch.Tensor:
    """(B, 3, size, size) in [-1, 1]: files resized by PIL (as the reference's transforms do), tensors by torch."""
    from .lpips_vgg import to_lpips_input

    out = [to_lpips_input(load_image(Path(i), size)[None], size) if not isinstance(i, torch.Tensor)
           else to_lpips_input(i[None], size) for i in items]
    return torch.cat(out).to(device)


def ic_lpips(model, real: list, generated: list, device, seed: int = 0, batch: int = 8, size: int = 256) -> dict:
    """IC-LPIPS of ``generated`` images against cluster centres ``real`` (paths or uint8 tensors), compared at
    ``size`` px (256 in the paper's protocol)."""
    with torch.no_grad():
        centres = model.taps(_lpips_batch(real, device, size))
        owner = []
        for chunk in _batches(generated, batch):
            taps = model.taps(_lpips_batch(chunk, device, size))
            d = torch.stack([model.distance_from_taps(taps, [c[k:k + 1] for c in centres])
                             for k in range(len(real))], dim=1)
            owner += d.argmin(1).tolist()
        gen = torch.Generator().manual_seed(seed)
        values, sizes = [], []
        for k in range(len(real)):
            members = [g for g, o in zip(generated, owner) if o == k]
            sizes.append(len(members))
            if len(members) < 2:
                continue
            members = [members[i] for i in torch.randperm(len(members), generator=gen)[:CLUSTER_SIZE].tolist()]
            taps = [model.taps(_lpips_batch(chunk, device, size)) for chunk in _batches(members, batch)]
            taps = [torch.cat([t[layer] for t in taps]) for layer in range(len(taps[0]))]
            dists = [model.distance_from_taps([t[i + 1:] for t in taps], [t[i:i + 1] for t in taps])
                     for i in range(len(members) - 1)]
            values.append(float(torch.cat(dists).mean()))
    return {"value": sum(values) / len(values) if values else None, "cluster_sizes": sizes}


def inception_logits(model, images: list, device, batch: int = 16) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for chunk in _batches(images, batch):
            loaded = [_read(i) for i in chunk]
            same = all(t.shape == loaded[0].shape for t in loaded)
            groups = [_stack(loaded)] if same else [t[None] for t in loaded]
            out += [model.logits_unbiased(g.to(device)).float().cpu() for g in groups]
    return torch.cat(out)


def set_generation_metrics(models: dict, generated: dict, real: dict, device, lpips_size: int = 256) -> dict:
    """``generated``/``real``: {defect: [paths or uint8 tensors]}. Returns {"ic_lpips": ..., "is": ...}."""
    from .inception import inception_score

    result = {}
    if "lpips" in models:
        per = {}
        for defect, images in generated.items():
            if real.get(defect):
                per[defect] = ic_lpips(models["lpips"], real[defect], images, device, size=lpips_size)
        vals = [v["value"] for v in per.values() if v["value"] is not None]
        result["ic_lpips"] = {"mean": sum(vals) / len(vals) if vals else None, "std": None, "defects": per}
    if "inception" in models:
        per = {}
        for defect, images in generated.items():
            m, s = inception_score(inception_logits(models["inception"], images, device))
            per[defect] = {"mean": m, "std": s}
        vals = [v["mean"] for v in per.values()]
        result["is"] = {"mean": sum(vals) / len(vals) if vals else None, "std": None, "defects": per}
    return result


def load_models(weights: dict, device) -> dict:
    from .inception import load_inception
    from .lpips_vgg import load_lpips

    models = {}
    if "lpips" in weights:
        models["lpips"] = load_lpips(*weights["lpips"], device=device)
    if "inception" in weights:
        models["inception"] = load_inception(weights["inception"], device=device)
    return models


def generation_metrics(weights: dict, sources: list, category, device) -> dict:
    """{set name: metrics} for the synthetic sets (SetSources) of a category (split.Category)."""
    models = load_models(weights, device)
    real = {}
    for shot in category.shots:
        real.setdefault(shot.defect, []).append(shot.image)
    out = {}
    for source in sources:
        print(f"generation metrics of {source.name}", file=sys.stderr)
        generated = {d: [i for i, _ in pairs] for d, pairs in source.pairs.items()}
        if category.defects == ["defect"]:  # a folder test set: one defect type, whatever the set calls it
            generated = {"defect": [i for v in generated.values() for i in v]}
        out[source.name] = set_generation_metrics(models, generated, real, device)
    return out
