"""Writing files so that nothing already on disk is lost or half-written."""
from __future__ import annotations

import os
import secrets
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
    tmp = new_temporary(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def new_temporary(path: Path, folder: bool = False) -> str:
    """A new empty file (or ``folder``) beside ``path``, created as a plain ``open()`` / ``mkdir`` creates
    them (mode 666 / 777 less the umask; ``tempfile.mkstemp`` / ``mkdtemp`` give 600 / 700, which the
    rename into place would pass on to the result, unreadable for other accounts)."""
    path = Path(path)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            if folder:
                tmp.mkdir()
            else:
                open(tmp, "xb").close()
            return str(tmp)
        except FileExistsError:
            continue


def safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """The ``.safetensors`` file of ``tensors`` as bytes, for writing with a plain ``open()``
    (safetensors' own ``save_file`` creates its files with mode 600 whatever the umask)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def atomic_save_safetensors(tensors: dict, path: Path, metadata: dict | None = None, overwrite: bool = False) -> Path:
    data = safetensors_bytes(tensors, metadata)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), overwrite)
