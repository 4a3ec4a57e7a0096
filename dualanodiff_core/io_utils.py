"""Writing files so that nothing already on disk is lost or half-written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import DualAnoDiffError


def atomic_write(path: Path, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Call ``write(temporary path)`` in the target folder, then rename over ``path``; a failure
    leaves neither a partial file nor a changed target. Refuses an existing ``path`` unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise DualAnoDiffError(f"{path} already exists; choose another output or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save_safetensors(tensors: dict, path: Path, metadata: dict | None = None, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    return atomic_write(
        path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata), overwrite
    )
