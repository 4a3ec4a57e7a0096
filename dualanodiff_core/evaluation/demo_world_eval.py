"""The downstream evaluation in the demo's toy world (:mod:`dualanodiff_core.demo.world`), at 64 px.

What a detector gains from each generated set over the two baselines, on a held-out test set the
world draws fresh: defect images of the demo's defect type and normal images, from seeds no other part
of the demo uses. The few shots are the demo's own (``demo_world.samples(shots, seed=1000 + seed,
defect)``, as :func:`dualanodiff_core.demo.run.write_few_shot` writes them), so the baselines start from
exactly what the generator was trained on.

    from dualanodiff_core.evaluation.demo_world_eval import DemoEvalConfig, evaluate_demo_world
    summary = evaluate_demo_world({"DualAnoDiff": out / "samples" / "saim" / "world" / "scratch",
                                   "without SAIM": out / "samples" / "no_saim" / "world" / "scratch"},
                                  out / "evaluation", DemoEvalConfig(defect="scratch", shots=8, seed=0))

Sets may be folders written by ``generate`` (any layout :mod:`.synthetic_sets` reads) or in-memory
:class:`~.sources.Pairs`. Writes metrics.json, report.md, curves.png and predictions.png under ``out``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..demo import world as demo_world
from ..errors import DualAnoDiffError
from .loading import tensor_pairs, training_sets
from .run import EvalData, TrainingSet, choose_device, evaluate, selection_data
from .sources import PairPool, Pairs
from .synthetic_sets import load_source, parse_set_argument
from .training import DetectorConfig

CATEGORY = "world"
# Detectors of the demo's size train on one CPU thread: the fastest setting for them, and the one that keeps
# the figures the same on every machine's thread setting (a CPU detector's numbers depend on the thread
# count: real-only, detector seeds 0-7, pixel AP 86.0 on 1 thread, 87.2 on 2)
DETECTOR_THREADS = 1


@dataclass
class DemoEvalConfig:
    defect: str = "scratch"
    shots: int = 8               # the demo's few shots (seed 1000 + seed)
    seed: int = 0
    test_defects: int = 48
    test_normals: int = 48
    normals: int = 64            # normal training images
    size: int = demo_world.SIZE  # 64: a multiple of 32, as the detector needs
    epochs: int = 8              # 64 steps: about 10 s per detector on one CPU core
    samples_per_epoch: int = 128
    batch_size: int = 16
    lr: float = 2e-3             # the paper's 1e-4 is meant for 200 epochs
    base_width: int = 8
    select: str = "validation"
    seeds: tuple = (0,)
    baselines: tuple = ("real-only", "crop-paste")
    mix_real: float | None = None  # evaluate --mix-real: also each set with the shots kept in every batch
    unmixed: tuple = ()            # sets not also mixed with the shots (e.g. an ablation)
    cpu: bool = False

    def detector(self) -> DetectorConfig:
        return DetectorConfig(resolution=self.size, epochs=self.epochs, samples_per_epoch=self.samples_per_epoch,
                              batch_size=self.batch_size, lr=self.lr, base_width=self.base_width, select=self.select)


def world_data(cfg: DemoEvalConfig) -> EvalData:
    """Few shots, normal training images and the held-out test set, drawn from the world."""
    if cfg.defect not in demo_world.DEFECTS:
        raise DualAnoDiffError(f"defect {cfg.defect!r}: choose one of {', '.join(demo_world.DEFECTS)}")
    import numpy as np

    shots = demo_world.samples(cfg.shots, seed=1000 + cfg.seed, defect=cfg.defect, size=cfg.size)
    normals = demo_world.samples(cfg.normals, seed=3000 + cfg.seed, size=cfg.size)
    bad = demo_world.samples(cfg.test_defects, seed=5000 + cfg.seed, defect=cfg.defect, size=cfg.size)
    good = demo_world.samples(cfg.test_normals, seed=6000 + cfg.seed, size=cfg.size)
    shot_pairs = tensor_pairs([s.image for s in shots], [s.mask for s in shots], cfg.defect)
    test = tensor_pairs([s.image for s in bad + good], [s.mask for s in bad + good], cfg.defect)
    test.defects = [cfg.defect] * len(bad) + ["good"] * len(good)
    test.names = [f"{cfg.defect}/{i:03d}" for i in range(len(bad))] + [f"good/{i:03d}" for i in range(len(good))]
    normal_images = tensor_pairs([s.image for s in normals], np.zeros((len(normals), cfg.size, cfg.size), bool)).images
    return EvalData(CATEGORY, [cfg.defect], test, normal_images, shot_pairs,
                    notes=[f"toy world, test set drawn with seeds {5000 + cfg.seed} and {6000 + cfg.seed}"])


def evaluate_demo_world(sets: dict, out: Path, cfg: DemoEvalConfig | None = None, log=None) -> dict:
    """Train and score a detector per set (folders or Pairs) and per baseline; returns the summary."""
    cfg = cfg or DemoEvalConfig()
    data = world_data(cfg)
    det = cfg.detector()
    normals = selection_data(data, det, 0.1)[0]
    sources, in_memory = [], []
    for name, value in sets.items():
        if isinstance(value, Pairs):
            parse_set_argument(f"{name}=unused")  # the same naming rules as the command line
            in_memory.append((name, value))
        else:
            sources.append(load_source(name, Path(value), CATEGORY, [cfg.defect]))
    built, _ = training_sets(data, sources, list(cfg.baselines), cfg.size, normals=normals, mix_real=cfg.mix_real)
    built = [ts for ts in built if ts.kind != "mixed" or ts.description["mixed_with"] not in cfg.unmixed]
    memory = []
    for name, pairs in in_memory:
        kept = pairs.select(pairs.masks.flatten(1).any(1))
        if len(kept) == 0:
            raise DualAnoDiffError(f"set {name}: every mask is empty, there is no defect to learn from")
        memory.append(TrainingSet(name, "synthetic", PairPool(kept), {"root": "in memory", "used_pairs": len(kept)}))
    built = built[:len(sources)] + memory + built[len(sources):]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(DETECTOR_THREADS)
    try:
        return evaluate(data, built, det, list(cfg.seeds), Path(out), device=choose_device(cfg.cpu),
                        val_fraction=0.1, overwrite=True, log=log)
    finally:
        torch.set_num_threads(threads)

