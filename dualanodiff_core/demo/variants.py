"""The demo's two models, DualAnoDiff and the ablation without SAIM, each trained and sampled in a process of
its own, side by side (one torch thread each on 2 cores while they train: on the demo's 64 px model a SAIM
step takes 0.31 s on one thread and 0.21 s on two, so two processes of one thread finish both models sooner
than one of two threads after the other; and a process of one thread never spins against a busy
neighbour). Each generates with the cores free when it starts: the ablation, which trains faster and draws
fewer pairs, is done by then, so the DualAnoDiff model draws its pairs on both. Every stage
reports its steps and pairs to a ``display``; the trainer's and generator's own messages go to
``<out>/logs/<variant>.log``.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DualAnoDiffError
from .narration import NAMES


@dataclass
class VariantResult:
    variant: str
    checkpoint: Path
    samples: Path
    setup_seconds: float      # base model loaded, pairs read and encoded: until the first step was done
    train_seconds: float
    generate_seconds: float


def run_variant(cfg, variant: str, images: Path, masks: Path, out: Path, threads: int | None, queue) -> VariantResult:
    """Train ``variant`` and generate its pairs; ``queue.put((variant, stage, done, total))`` on the way.
    ``threads``: torch's thread count in a worker process (None: the trainer's own choice)."""
    from .run import _generate, _train, variant_pairs

    chosen = os.environ.get("DUALANODIFF_THREADS")  # the user's, if any
    if threads is not None:
        os.environ["DUALANODIFF_THREADS"] = str(threads)  # the trainer keeps to it
    log_path = out / "logs" / f"{variant}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    first_step = []

    def report(stage):
        def progress(done, total):
            if stage == "train" and not first_step:
                first_step.append(time.perf_counter())
            queue.put((variant, stage, done, total))
        return progress

    with open(log_path, "w", encoding="utf-8") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        t0 = time.perf_counter()
        ckpt = _train(cfg, images, masks, out / "checkpoints", saim=variant == "saim", progress=report("train"))
        t1 = time.perf_counter()
        if threads is not None and chosen is None:  # the generator takes the cores free now: both, once the other
            del os.environ["DUALANODIFF_THREADS"]      # model is done
        elif threads is not None:
            os.environ["DUALANODIFF_THREADS"] = chosen
        root = _generate(cfg, ckpt, out / "samples" / variant, variant_pairs(cfg, variant), progress=report("generate"))
        t2 = time.perf_counter()
    setup = (first_step[0] if first_step else t1) - t0
    return VariantResult(variant, ckpt, root, round(setup, 1), round(t1 - t0, 1), round(t2 - t1, 1))


def run_variants(cfg, variants: tuple, images: Path, masks: Path, out: Path, display) -> dict:
    """Every variant, side by side in processes where there are CPUs for it (else one after the other,
    here); ``display(variant, stage, done, total)`` for every report. Returns {variant: VariantResult}.
    The workers end with the demo: stopped when it stops (Ctrl-C, an error), and stopping themselves at
    their next step if it was killed."""
    from ..runtime.threads import usable_cpus

    cpus = usable_cpus()
    if len(variants) < 2 or cpus < 2 or (not cfg.cpu and _has_accelerator()):
        class Relay:  # reports straight to the display, in this process
            def put(self, item):
                display(*item)

        return {v: run_variant(cfg, v, images, masks, out, None, Relay()) for v in variants}
    import multiprocessing
    import queue as queue_module

    ctx = multiprocessing.get_context("spawn")  # the same on Linux, macOS and Windows; no forked torch state
    q = ctx.Queue()
    threads = max(1, cpus // len(variants))
    workers = [ctx.Process(target=_worker, args=(cfg, v, images, masks, out, threads, q, os.getpid()),
                           name=f"dualanodiff-demo-{v}", daemon=True) for v in variants]
    results: dict = {}
    try:
        for w in workers:
            w.start()
        while len(results) < len(variants):
            try:
                item = q.get(timeout=1.0)
            except queue_module.Empty:
                dead = [w.name for w in workers if not w.is_alive() and w.exitcode not in (0, None)]
                if dead:
                    raise DualAnoDiffError(f"the demo's worker process {', '.join(dead)} stopped without a result; "
                                           f"its messages are in {out / 'logs'}")
                continue
            if item[0] == "result":
                results[item[1].variant] = item[1]
            elif item[0] == "error":
                raise DualAnoDiffError(f"training or sampling the {NAMES.get(item[1], item[1])} model failed:\n{item[2]}")
            else:
                display(*item)
        for w in workers:
            w.join()
        return {v: results[v] for v in variants}
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join(5)


def _worker(cfg, variant, images, masks, out, threads, q, parent: int) -> None:
    """A worker process: the variant, its reports and then its result (or its error) on ``q``."""
    import traceback

    class Reports:  # a killed demo leaves its workers orphaned: they stop at their next report
        def put(self, item):
            if os.getppid() != parent:
                raise SystemExit("the demo stopped")
            q.put(item)

    try:
        q.put(("result", run_variant(cfg, variant, images, masks, out, threads, Reports())))
    except BaseException as error:  # noqa: BLE001 (reported to the demo, which raises it)
        if not isinstance(error, SystemExit):
            q.put(("error", variant, traceback.format_exc().strip()))


def _has_accelerator() -> bool:
    """A GPU (CUDA or MPS) the demo would run on: then one process at a time, as before."""
    import torch

    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
