"""The dataset formats by name, as ``--format`` and the Save Dataset node take them.

``pairs`` and ``mvtec`` are the layouts ``generate`` and the Save Dataset node write sample by sample
(``generation/dataset_layout.py``); ``coco`` and ``yolo`` are exports made from a written dataset
(``export/``), into ``<dataset root>/coco/`` and ``<dataset root>/yolo/``.
"""
from __future__ import annotations

from ..errors import DualAnoDiffError

LAYOUT_FORMATS = ("pairs", "mvtec")
EXPORT_FORMATS = ("coco", "yolo")
FORMATS = LAYOUT_FORMATS + EXPORT_FORMATS


def parse_formats(values, what: str = "--format", allowed: tuple = FORMATS) -> tuple:
    """The formats named by ``values`` (strings, each one name or several joined by commas; the option
    may be repeated), in the order of ``allowed``, each once. Refuses an unknown or empty name."""
    names = []
    for value in values or ():
        for name in str(value).split(","):
            name = name.strip().lower()
            if name not in allowed:
                raise DualAnoDiffError(f"{what} {value!r}: {name!r} is not a dataset format; choose from "
                                       f"{', '.join(allowed)} (several at once: {what} {','.join(allowed[-2:])})")
            names.append(name)
    return tuple(f for f in allowed if f in names)
