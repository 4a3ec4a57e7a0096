"""Resumable training checkpoints: trainable weights, optimizer state and step, written atomically
(a temporary folder renamed into place) under ``OUTPUT_DIR/checkpoints/step-NNNNNN``."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import DualAnoDiffError
from ..io_utils import new_temporary, safetensors_bytes

PREFIX = "step-"


def checkpoint_dirs(output_dir: Path) -> list:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()),
                  key=lambda p: int(p.name[len(PREFIX):]))


def save_training_checkpoint(output_dir: Path, step: int, trainable: dict, optimizer, keep: int, extra: dict) -> Path:
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = Path(new_temporary(final, folder=True))
    try:
        (tmp / "trainable.safetensors").write_bytes(
            safetensors_bytes({k: v.detach().float().cpu() for k, v in trainable.items()}))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=1), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_resume(output_dir: Path, resume: str) -> Path:
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        if not found:
            raise DualAnoDiffError(f"--resume latest: no checkpoint in {Path(output_dir) / 'checkpoints'}")
        return found[-1]
    path = Path(resume)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / "checkpoints" / resume
    if not (path / "state.json").is_file():
        raise DualAnoDiffError(f"--resume {resume}: {path} is not a training checkpoint folder")
    return path


def read_state(path: Path) -> dict:
    """``state.json`` of a training checkpoint: the step, the name and the run's settings."""
    try:
        return json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DualAnoDiffError(f"{path}/state.json is unreadable ({exc}); resume from another checkpoint") from None


def load_training_checkpoint(path: Path, trainable: dict, optimizer) -> int:
    """Restore weights (in place) and optimizer; returns the step the checkpoint was taken after."""
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    if set(saved) != set(trainable):
        raise DualAnoDiffError(f"{path} was written by a run with other settings (rank, --bcm, text-encoder LoRA)")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved[name])
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    return read_state(path)["step"]
