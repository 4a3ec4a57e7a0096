"""A stand-in that lets `import torchvision` succeed while torchvision is not installed (tests only).

ComfyUI imports torchvision at module level in model files the tests never run, and segment-anything
imports `torchvision.transforms.functional` (resize, to_pil_image) and `torchvision.ops` in modules our
code does not call. Any attribute of the stand-in can be imported; calling one fails loudly.
Use `with torchvision_stand_in(): import ...`; it does nothing when torchvision is really installed.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types


class _Absent:
    """Any attribute of the stand-in: usable at import time, fails loudly when called."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return _Absent(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name}: torchvision is not installed (test stand-in)")


class _StandInModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Absent(f"{self.__name__}.{attr}")


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StandInModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def _prewarm_torchvision_checks():
    # transformers (lru_cache) and diffusers (module constant) remember whether torchvision exists;
    # make them look while the stand-in is NOT there, or they later try to use it.
    with contextlib.suppress(ImportError):
        from transformers.utils import import_utils as tiu
        for name in ("is_torchvision_available", "is_torchvision_v2_available"):
            if hasattr(tiu, name):
                getattr(tiu, name)()
    with contextlib.suppress(ImportError):
        import diffusers.utils.import_utils  # noqa: F401


@contextlib.contextmanager
def torchvision_stand_in():
    """Make `import torchvision` succeed inside the block, only if torchvision is really absent.

    ComfyUI imports it at module level in model files we never run (cascade, cosmos, ...). The stand-in
    is removed on exit: left in sys.modules it makes transformers believe torchvision exists.
    """
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    _prewarm_torchvision_checks()
    finder = _StandInFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
