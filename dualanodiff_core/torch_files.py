"""Reading PyTorch pickles safely: plain tensors only, refused in our words otherwise."""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

from .errors import DualAnoDiffError


def load_weights_pickle(path: Path, where: str, hint: str, error: type = DualAnoDiffError):
    """``torch.load(path, weights_only=True)`` on the CPU, without torch's warnings. A pickle that holds
    other Python objects, or one that cannot be read, raises ``error`` with one line: ``where`` (e.g.
    the flag and the path), what is wrong (for a refused object, its name), then ``hint`` (what to give
    instead). torch's own advice to load with ``weights_only=False`` is never passed on: for a file
    refused for safety it is the one thing the user must not do."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        named = f" ({found.group(1)})" if found else ""
        raise error(f"{where} holds Python objects other than tensors{named} and was refused for safety: only "
                    f"weight files are read, never code; {hint}") from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{where} is not a readable PyTorch weights file ({reason}); it may be truncated; {hint}") from None
