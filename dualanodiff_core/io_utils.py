"""Writing files so that nothing already on disk is lost or half-written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import DualAnoDiffError


def atomic_save_safetensors(tensors: dict, path: Path, metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Write to a temporary file in the target folder, then rename over ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise DualAnoDiffError(f"{path} already exists; choose another output or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
