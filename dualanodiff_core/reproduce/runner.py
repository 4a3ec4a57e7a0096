"""Running a reproduction's stages: each one a ``dualanodiff`` command in its own process, its output in
``logs/<stage>.log``, one progress bar over the whole run.

Several processes (``accelerate launch --num_processes N ... reproduce``) share the work without
talking to each other: process i takes every N-th defect type (its training and generation) and every
N-th category's evaluation, which waits, by watching the files, until that category's sample sets are
complete. Each stage runs as a single-process command on the process's own GPU, so a stage is the same
whether one process or eight run the reproduction. A failed stage leaves ``logs/<stage>.failed``, so
the other processes stop waiting for it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import DualAnoDiffError
from .plan import ReproduceConfig, Stage, resume_flags, status

# set by torchrun/accelerate for a distributed group; a stage's command must not join that group
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                   "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PMI_SIZE",
                   "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                   "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE")


def process_position() -> tuple:
    """(index, count, local index) of this process in an accelerate/torchrun launch; (0, 1, 0) alone."""
    return (int(os.environ.get("RANK", 0)), max(1, int(os.environ.get("WORLD_SIZE", 1))),
            int(os.environ.get("LOCAL_RANK", 0)))


def my_share(stages: list, index: int, count: int) -> list:
    """This process's stages: every ``count``-th defect type (train and generate stay together) and
    every ``count``-th category evaluation, in plan order."""
    units = list(dict.fromkeys((s.category, s.defect) for s in stages if s.kind != "evaluate"))
    mine = {u for i, u in enumerate(units) if i % count == index}
    categories = list(dict.fromkeys(s.category for s in stages if s.kind == "evaluate"))
    mine_eval = {c for i, c in enumerate(categories) if i % count == index}
    return [s for s in stages if ((s.category, s.defect) in mine if s.kind != "evaluate" else s.category in mine_eval)]


def stage_env(local_index: int, count: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    package_parent = str(Path(__file__).resolve().parents[2])  # so `-m dualanodiff_core.cli` finds this copy
    env["PYTHONPATH"] = os.pathsep.join([package_parent, *filter(None, [os.environ.get("PYTHONPATH")])])
    if count > 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(count)]
        env["CUDA_VISIBLE_DEVICES"] = devices[local_index % len(devices)]
    return env


def log_path(cfg: ReproduceConfig, stage: Stage) -> Path:
    return Path(cfg.output_dir) / "logs" / f"{stage.name}.log"


def failed_marker(cfg: ReproduceConfig, stage: Stage) -> Path:
    return log_path(cfg, stage).with_suffix(".failed")


def run_stage(stage: Stage, cfg: ReproduceConfig, env: dict) -> None:
    """The stage's command in a child process; its output goes to the stage's log."""
    log = log_path(cfg, stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    failed_marker(cfg, stage).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "dualanodiff_core.cli", stage.kind, *stage.argv, *resume_flags(stage, cfg)]
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {stage.command()}\n")
        out.flush()
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code == 0 and stage.kind == "train" and stage.output.is_file():
        # a finished model's resumable checkpoints (LoRA, SAIM and Adam state in fp32, 1.6 GB each at rank 32)
        shutil.rmtree(stage.output.parent / "checkpoints", ignore_errors=True)
    if code != 0:
        failed_marker(cfg, stage).write_text(f"exit code {code}\n", encoding="utf-8")
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
        raise DualAnoDiffError(f"stage {stage.name} failed (exit code {code}); the end of {log}:\n  "
                               + "\n  ".join(tail) + "\nFix the cause and run the same reproduce command again: "
                               "finished stages are kept, this one continues")


def wait_for(needed: list, cfg: ReproduceConfig, poll_seconds: float, on_wait=None) -> None:
    """Block until every stage in ``needed`` is done; stop if one of them failed in another process."""
    while True:
        pending = [s for s in needed if status(s, cfg) != "done"]
        if not pending:
            return
        failed = [s for s in pending if failed_marker(cfg, s).exists()]
        if failed:
            raise DualAnoDiffError(f"stage {failed[0].name} failed in another process (see {log_path(cfg, failed[0])}); "
                                   "fix it and run reproduce again")
        if on_wait:
            on_wait(pending)
        time.sleep(poll_seconds)


def run_share(stages: list, cfg: ReproduceConfig, poll_seconds: float = 30.0) -> None:
    """Run this process's share of ``stages`` (the whole plan), skipping what is done."""
    from tqdm.auto import tqdm

    index, count, local = process_position()
    mine = my_share(stages, index, count)
    env = stage_env(local, count)
    bar = tqdm(total=len(mine), desc="reproduce" if count == 1 else f"reproduce [{index + 1}/{count}]", unit="stage")
    for stage in mine:
        if status(stage, cfg) == "done":
            bar.update(1)
            continue
        if stage.kind == "evaluate":
            needed = [s for s in stages if s.kind == "generate" and s.category == stage.category]
            wait_for(needed, cfg, poll_seconds,
                     on_wait=lambda p: bar.set_postfix_str(f"waiting for {len(p)} sample set(s) of {stage.category}"))
        bar.set_postfix_str(f"{stage.name} (log: {log_path(cfg, stage).name})")
        run_stage(stage, cfg, env)
        bar.update(1)
    bar.close()
