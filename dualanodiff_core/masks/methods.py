"""The mask methods: one table that the CLI's and the node's choices, their help texts and every
"needs a model" check read. Adding a method: a row here and its branch in ``masks.extract_masks``.
Imports nothing heavy, so node classes can read it when ComfyUI asks for their inputs."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DualAnoDiffError


@dataclass(frozen=True)
class MaskMethod:
    """A way to cut the mask out of an anomaly-part image: the one table the CLI's choices, the node's
    choices, their help texts and every "needs a model" check read."""
    name: str
    summary: str
    needs: tuple = ()     # models it cannot work without
    uses: tuple = ()      # models it takes when given (``needs`` included)


MASK_METHODS = {m.name: m for m in (
    MaskMethod("threshold", "distance from mid-grey, no weights (threshold default 0.1)"),
    MaskMethod("u2net", "U-2-Net saliency, the reference's method (threshold default 0.5)", ("u2net",), ("u2net",)),
    MaskMethod("sam", "a coarse mask (U-2-Net when given, else the grey threshold) refined by Segment Anything",
               ("sam",), ("sam", "u2net")),
)}
METHODS = tuple(MASK_METHODS)
# how to supply each model, for the core API; the CLI and the nodes pass their own wording
MODEL_HINTS = {"u2net": "a U-2-Net model (load u2net.pth / u2netp.pth)", "sam": "a Segment Anything model"}


def mask_method(name: str) -> MaskMethod:
    if name not in MASK_METHODS:
        raise DualAnoDiffError(f"unknown mask method {name!r}; choose one of {', '.join(METHODS)}")
    return MASK_METHODS[name]


def check_mask_method(name: str, given: set, hints: dict = MODEL_HINTS, subject: str | None = None) -> MaskMethod:
    """The method, after checking that every model it needs is in ``given``; the message says how to
    give the first missing one (``hints[model]``), about ``subject`` (default: "mask method 'NAME'")."""
    method = mask_method(name)
    missing = [m for m in method.needs if m not in given]
    if missing:
        raise DualAnoDiffError(f"{subject or f'mask method {name!r}'} needs {hints[missing[0]]}")
    return method
