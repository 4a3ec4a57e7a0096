"""``--save-maps DIR``: every predicted map as a 16-bit PNG, so any metric can be recomputed elsewhere.

    DIR/ground_truth/<test image id>.png        the test mask at the evaluation resolution (0/255, 8-bit)
    DIR/<set>/seed<k>/<test image id>.png       the predicted map: round(p * 65535), 16-bit grey
    DIR/maps.jsonl                              one line per map: set, seed, defect, test image (the
                                                source file), source mask, ground truth, map, scale

The test image id is ``<defect>/<file stem>`` (``good/<stem>`` for normal images). Maps are quantised
to 1/65535: metrics recomputed from them agree with metrics.json to about 1e-4.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..io_utils import atomic_write

SCALE = 65535


def _png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"), overwrite=True)


def write_map16(values: torch.Tensor, path: Path) -> None:
    _png((values.clamp(0, 1).numpy().astype(np.float64) * SCALE + 0.5).astype(np.uint16), path)


def read_map16(path: Path) -> np.ndarray:
    """A saved map back as float64 in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float64) / SCALE


class MapWriter:
    def __init__(self, root: Path, data):
        self.root, self.data, self.lines = Path(root), data, []
        self.ids = self._ids()
        for i, name in enumerate(self.ids):
            mask = self.data.test.masks[i, 0].numpy().astype(np.uint8) * 255
            _png(mask, self.root / "ground_truth" / f"{name}.png")

    def _ids(self) -> list:
        sources = self.data.test_sources or [(None, None)] * len(self.data.test)
        out = []
        for i, (image, _) in enumerate(sources):
            stem = Path(image).stem if image is not None else f"{i:05d}"
            out.append(f"{self.data.test.defects[i]}/{stem}")
        return out

    def add(self, name: str, seed: int, maps: torch.Tensor) -> None:
        sources = self.data.test_sources or [(None, None)] * len(self.data.test)
        for i, ident in enumerate(self.ids):
            rel = Path(name) / f"seed{seed}" / f"{ident}.png"
            write_map16(maps[i], self.root / rel)
            image, mask = sources[i]
            self.lines.append({"set": name, "seed": seed, "defect": self.data.test.defects[i],
                               "image": str(image) if image is not None else None,
                               "source_mask": str(mask) if mask is not None else None,
                               "ground_truth": f"ground_truth/{ident}.png", "map": str(rel), "scale": SCALE})

    def finish(self) -> Path:
        text = "".join(json.dumps(line) + "\n" for line in self.lines)
        return atomic_write(self.root / "maps.jsonl", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"),
                            overwrite=True)
