"""Per-row branch LoRA on a ComfyUI attention projection (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

``with_branch_lora(module, ...)`` returns a shallow copy of the module whose class is a subclass of the
module's own class: ``forward`` is the original one plus the branch LoRA delta of each row. The copy
shares the original's parameter dict, so ComfyUI's weight patches (LoRA files, merges) and low-VRAM
casting reach it exactly as they reach the original, and it is installed with ``add_object_patch`` on
a clone of the model, so the original module and every other MODEL are untouched.
"""
from __future__ import annotations

import copy

LORA_PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}
_SITE = "_dualanodiff_site"
_classes: dict = {}


def _with_lora_class(base: type) -> type:
    cls = _classes.get(base)
    if cls is None:
        def forward(self, x, *args, **kwargs):
            out = base.forward(self, x, *args, **kwargs)
            patch_set, block, attention, target = getattr(self, _SITE)
            delta = patch_set.lora_delta(block, attention, target, x)
            return out if delta is None else out + delta.to(out.dtype)

        cls = _classes[base] = type(f"DualAnoDiff{base.__name__}", (base,), {"forward": forward, "__module__": __name__})
    return cls


def with_branch_lora(module, patch_set, block: tuple, attention: str, target: str):
    wrapped = copy.copy(module)  # shares _parameters, _buffers and _modules with the original
    wrapped.__class__ = _with_lora_class(type(module))
    wrapped.__dict__[_SITE] = (patch_set, block, attention, target)
    return wrapped
