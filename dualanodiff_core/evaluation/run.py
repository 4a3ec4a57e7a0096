"""Every training set x seed: train (or reuse) a detector, score the test set, collect metrics, write outputs.

Layout under the output folder::

    detectors/<set>/seed<k>/settings.json       what the detector is trained with (checked on resume)
    detectors/<set>/seed<k>/state.pt            training state while unfinished (resumed exactly)
    detectors/<set>/seed<k>/detector.safetensors, run.json   a finished detector: never trained again
    metrics.json, report.md, curves.png, predictions.png

Checkpoint selection data (``validation``, the default): a fixed share of the normal training images,
held out of training for every detector alike, plus the few real defect shots (real defects that are
not in the test set). ``test`` selects on the test set as the paper does (optimistic); ``last`` keeps
the final state.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import DualAnoDiffError
from ..io_utils import atomic_save_safetensors, atomic_write
from .sources import Pairs
from .split import GOOD
from .training import DetectorConfig, Scored, load_detector, score_maps, train_detector

VALIDATION_SEED = 12345


@dataclass
class EvalData:
    """The real data of one evaluation, in memory at the evaluation resolution."""

    category: str
    defects: list
    test: Pairs             # defects: defect type per image (``good`` = normal), names: test image ids
    normals: torch.Tensor   # (N, 3, H, W) uint8 normal training images
    shots: Pairs            # the few real defect pairs (may be empty)
    test_sources: list = field(default_factory=list)   # (image path, mask path or None) per test image
    notes: list = field(default_factory=list)

    def fingerprint(self) -> dict:
        return {"category": self.category, "defects": list(self.defects), "test": len(self.test),
                "test_names": list(self.test.names)[:2000], "normals": int(self.normals.shape[0]),
                "shots": list(self.shots.names)}


@dataclass
class TrainingSet:
    """One thing evaluated: a synthetic set or a baseline, as a sampler of defective training samples."""

    name: str
    kind: str              # "synthetic", "real-only" or "crop-paste"
    source: object         # has draw(n, generator) -> (images, masks)
    description: dict
    notes: list = field(default_factory=list)


def choose_device(cpu: bool = False) -> torch.device:
    if not cpu and torch.cuda.is_available():
        return torch.device("cuda")
    if not cpu and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def validation_split(count: int, fraction: float) -> torch.Tensor:
    """Bool (count,): which normal training images are held out for checkpoint selection (fixed seed,
    at least one when there are two or more, never all)."""
    held = torch.zeros(count, dtype=torch.bool)
    k = min(count - 1, max(1, round(fraction * count))) if count >= 2 and fraction > 0 else 0
    if k:
        held[torch.randperm(count, generator=torch.Generator().manual_seed(VALIDATION_SEED))[:k]] = True
    return held


def selection_data(data: EvalData, cfg: DetectorConfig, val_fraction: float) -> tuple:
    """(normal images the detectors train on, the Scored selection data or None, notes)."""
    notes = []
    if cfg.select == "last":
        return data.normals, None, notes
    if cfg.select == "test":
        anomalous = torch.tensor([d != GOOD for d in data.test.defects])
        return data.normals, Scored(data.test.images, data.test.masks, anomalous), notes
    held = validation_split(data.normals.shape[0], val_fraction)
    if len(data.shots) == 0:
        notes.append("no few-shot real defects for checkpoint selection: the last checkpoint is kept")
        return data.normals, None, notes
    images = torch.cat([data.normals[held], data.shots.images])
    masks = torch.cat([torch.zeros(int(held.sum()), 1, *data.normals.shape[-2:], dtype=torch.bool), data.shots.masks])
    anomalous = torch.cat([torch.zeros(int(held.sum()), dtype=torch.bool), torch.ones(len(data.shots), dtype=torch.bool)])
    return data.normals[~held], Scored(images, masks, anomalous), notes


def _folder(out: Path, name: str, seed: int) -> Path:
    return Path(out) / "detectors" / name / f"seed{seed}"


def detector_settings(data: EvalData, ts: TrainingSet, cfg: DetectorConfig, seed: int, val_fraction: float) -> dict:
    return {"detector": cfg.settings(), "seed": seed, "set": {"kind": ts.kind, **ts.description},
            "data": data.fingerprint(), "val_fraction": val_fraction if cfg.select == "validation" else None}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def check_resume(out: Path, data: EvalData, sets: list, cfg: DetectorConfig, seeds: list, val_fraction: float,
                 overwrite: bool) -> list:
    """Before anything is written: every existing detector folder must match this run (or be replaced
    with ``overwrite``). Returns the folders ``overwrite`` will clear."""
    stale = []
    for ts in sets:
        for seed in seeds:
            folder = _folder(out, ts.name, seed)
            previous = _read_json(folder / "settings.json")
            if previous is None:
                continue
            current = json.loads(json.dumps(detector_settings(data, ts, cfg, seed, val_fraction)))
            if previous == current:
                continue
            if overwrite:
                stale.append(folder)
                continue
            before, now = _flatten(previous), _flatten(current)
            differ = [f"{k}: {_short(before.get(k))} there, {_short(now.get(k))} now"
                      for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
            raise DualAnoDiffError(f"{folder} holds a detector trained with other settings or data "
                                   f"({'; '.join(differ[:6])}{'; ...' if len(differ) > 6 else ''}); use the same "
                                   "settings, another --output-dir, or pass --overwrite to retrain")
    return stale


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1), encoding="utf-8"), overwrite=True)


def obtain_detector(out: Path, data: EvalData, ts: TrainingSet, cfg: DetectorConfig, seed: int, device,
                    normals: torch.Tensor, selection: Scored | None, val_fraction: float) -> tuple:
    """A finished detector from disk, or train it (resuming an unfinished one). Returns (model, run info)."""
    from safetensors.torch import load_file

    folder = _folder(out, ts.name, seed)
    weights, info_path = folder / "detector.safetensors", folder / "run.json"
    if weights.is_file() and info_path.is_file() and (folder / "settings.json").is_file():  # checked by check_resume
        info = _read_json(info_path) or {}
        info["reused"] = True
        return load_detector(load_file(str(weights)), cfg.base_width, device), info
    _write_json(folder / "settings.json", detector_settings(data, ts, cfg, seed, val_fraction))
    state, info = train_detector(ts.source, normals, selection, cfg, seed, device, state_path=folder / "state.pt",
                                 progress=f"train {ts.name} seed {seed}")
    atomic_save_safetensors(state, weights, metadata={"format": "dualanodiff-detector", "base_width": str(cfg.base_width)},
                            overwrite=True)
    _write_json(info_path, info)
    (folder / "state.pt").unlink(missing_ok=True)
    info["reused"] = False
    return load_detector(state, cfg.base_width, device), info


def preview_indices(defects: list, count: int) -> list:
    """Up to ``count`` test images for predictions.png: round-robin over defect types, one normal last."""
    by_type = {}
    for i, d in enumerate(defects):
        by_type.setdefault(d, []).append(i)
    goods = by_type.pop(GOOD, [])
    chosen, depth = [], 0
    budget = max(0, count - (1 if goods else 0))
    while len(chosen) < budget and any(depth < len(v) for v in by_type.values()):
        for d in sorted(by_type):
            if depth < len(by_type[d]) and len(chosen) < budget:
                chosen.append(by_type[d][depth])
        depth += 1
    return chosen + goods[:1] if count else []


def mean_std(values: list) -> tuple:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else None
    return mean, std


def _clean(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def classification(out: Path, data: EvalData, ts: TrainingSet, cfg, seed: int, device) -> dict:
    """Accuracy of a ResNet-34 trained on the set's defects (``classifier.ClassifierConfig`` ``cfg``) on the
    real test defects; a result written before with the same settings and data is read back instead."""
    from .classifier import accuracy, predict, train_classifier

    path = Path(out) / "classifiers" / ts.name / f"seed{seed}.json"
    settings = json.loads(json.dumps({"classifier": cfg.settings(), "seed": seed, "set": {"kind": ts.kind, **ts.description},
                                      "data": data.fingerprint()}))
    previous = _read_json(path)
    if previous is not None and previous.get("settings") == settings:
        return previous["result"]
    test = data.test.select([d != GOOD for d in data.test.defects])
    model = train_classifier(ts.source, list(data.defects), cfg, seed, device)
    predicted = [data.defects[i] for i in predict(model, test.images, device).tolist()]
    result = accuracy(predicted, test.defects)
    _write_json(path, {"settings": settings, "result": result})
    return result


def evaluate(data: EvalData, sets: list, cfg: DetectorConfig, seeds: list, out: Path, *, device=None,
             val_fraction: float = 0.1, overwrite: bool = False, save_maps: Path | None = None, previews: int = 6,
             generation: dict | None = None, figures: bool = True, log=None, classify=None) -> dict:
    """``classify``: a ``classifier.ClassifierConfig`` to also score defect-type classification (categories
    with two or more defect types)."""
    """Run the whole comparison; returns the summary also written to ``out/metrics.json``."""
    from . import figures as figs
    from .report import build_summary, write_report
    from .saved_maps import MapWriter
    from .scoring import score_test_maps

    log = log or (lambda msg: print(msg, file=sys.stderr))
    device = device or choose_device()
    out = Path(out)
    for folder in check_resume(out, data, sets, cfg, seeds, val_fraction, overwrite):
        shutil.rmtree(folder)
    normals, selection, notes = selection_data(data, cfg, val_fraction)
    if classify is not None and len(data.defects) < 2:
        notes.append(f"defect-type classification needs two or more defect types; {data.category} has "
                     f"{len(data.defects)}, so it was not scored")
        classify = None
    data = replace(data, notes=list(data.notes) + notes)
    preview = preview_indices(data.test.defects, previews)
    writer = MapWriter(save_maps, data) if save_maps is not None else None
    results, preview_maps = {}, {}
    for ts in sets:
        results[ts.name] = {"runs": {}}
        for seed in seeds:
            model, info = obtain_detector(out, data, ts, cfg, seed, device, normals, selection, val_fraction)
            log(f"{'reused' if info.get('reused') else 'trained'} detector {ts.name} seed {seed}")
            maps = score_maps(model, data.test.images, device, cfg.batch_size)
            first = seed == seeds[0]
            scored = score_test_maps(maps, data.test.masks, data.test.defects, cfg.pro_limit, curves=first)
            run = {"category": _clean(scored["category"]),
                   "defects": {d: _clean(m) for d, m in scored["defects"].items()},
                   "training": {k: v for k, v in info.items() if k != "history"}}
            if first:
                results[ts.name]["curves"] = scored["curves"]
                preview_maps[ts.name] = maps[preview].clone()
            if writer is not None:
                writer.add(ts.name, seed, maps)
            if classify is not None:
                run["classification"] = classification(out, data, ts, classify, seed, device)
                log(f"classifier {ts.name} seed {seed}: accuracy {run['classification']['accuracy']:.3f}")
            results[ts.name]["runs"][str(seed)] = run
            del model, maps
    if writer is not None:
        writer.finish()
    summary = build_summary(data, sets, cfg, seeds, results, val_fraction, generation or {},
                            str(save_maps) if save_maps is not None else None,
                            classify.settings() if classify is not None else None)
    out.mkdir(parents=True, exist_ok=True)
    if figures:
        figs.curves_figure(results, out / "curves.png")
        figs.predictions_figure(data, preview, preview_maps, out / "predictions.png")
        summary["files"].update({"curves": "curves.png", "predictions": "predictions.png"})
    _write_json(out / "metrics.json", summary)
    write_report(summary, out / "report.md")
    return summary
