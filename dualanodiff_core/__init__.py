"""DualAnoDiff core: branch math, checkpoint format, importers; never imports ComfyUI.

Public API (imported lazily so that ``import dualanodiff_core`` stays cheap):
``load_dual_unet``, ``DualAnoDiffUNet``, ``Strengths``, ``load_checkpoint``, ``save_checkpoint``,
``DualAnoDiffCheckpoint``, ``convert_reference``, ``CheckpointError``.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_dual_unet": "runtime.diffusers_adapter",
    "DualAnoDiffUNet": "runtime.diffusers_adapter",
    "Strengths": "model.strengths",
    "build_layers": "runtime.diffusers_adapter",
    "load_checkpoint": "formats.checkpoint",
    "save_checkpoint": "formats.checkpoint",
    "DualAnoDiffCheckpoint": "formats.checkpoint",
    "convert_reference": "formats.reference_import",
    "CheckpointError": "errors",
    "DualAnoDiffError": "errors",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
