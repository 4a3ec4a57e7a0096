"""YOLO segmentation (Ultralytics): one label line per region, and the ``data.yaml`` naming the classes.

A line is ``<class> x1 y1 x2 y2 ...``: the class index (category id - 1) and the region's outline
(``regions.single_polygon``) with x divided by the image width and y by its height. The outline runs
along pixel edges, so testing pixel centres against it gives the mask back exactly; YOLO polygons have
no holes, so a region's holes are joined to its outline by cuts of zero width. An image without a defect
gets an empty label file (Ultralytics reads it as a background image).
"""
from __future__ import annotations

import numpy as np

from .regions import Regions, region_outlines, single_polygon


def label_text(regions: Regions, class_index: int) -> str:
    h, w = regions.labels.shape
    lines = []
    for outline in region_outlines(regions):
        poly = single_polygon(outline).astype(np.float64) / np.array([w, h])
        lines.append(f"{class_index} " + " ".join(f"{v:.6f}" for v in poly.ravel()))
    return "".join(line + "\n" for line in lines)


def data_yaml(folder: str, categories: list, val: bool) -> str:
    """``path`` is the export folder's absolute path (Ultralytics resolves a relative one against its own
    datasets folder, not against the yaml file); without validation images ``val`` names the train
    images."""
    names = "".join(f"  {c['id'] - 1}: '{c['name']}'\n" for c in categories)
    folder = folder.replace("'", "''")  # YAML's single-quoted string
    val_line = "val: images/val\n" if val else "val: images/train  # no image drew the val split\n"
    return (f"# written by dualanodiff export-dataset; class index = category id - 1, never renumbered\n"
            f"path: '{folder}'\ntrain: images/train\n{val_line}names:\n{names}")
