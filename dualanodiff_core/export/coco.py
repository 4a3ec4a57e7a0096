"""COCO instance segmentation: the ``images``, ``annotations`` and ``categories`` of one annotations file.

One annotation per connected defect region (``regions.py``), its mask as compressed RLE (``rle.py``):
exact for any shape, holes and one-pixel scratches included. ``bbox`` ([x, y, width, height] in pixels)
and ``area`` (pixel count) are the region's own. ``iscrowd`` is 0: every region is one instance. An image
without a defect is listed with no annotation.
"""
from __future__ import annotations

from .regions import Regions
from .rle import compress, region_counts

INFO = {"description": "DualAnoDiff generated defect images (dualanodiff export-dataset)", "version": "1"}


def image_entry(image_id: int, file_name: str, width: int, height: int) -> dict:
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}


def region_annotations(regions: Regions, category_id: int) -> list:
    """One annotation per region (without ``id`` and ``image_id``, which the writer assigns)."""
    h, w = regions.labels.shape
    return [{"category_id": category_id, "iscrowd": 0, "area": int(regions.area[k]),
             "bbox": [int(v) for v in regions.bbox[k]],
             "segmentation": {"size": [h, w], "counts": compress(counts)}}
            for k, counts in enumerate(region_counts(regions.labels, regions.count))]


def document(images: list, annotations: list, categories: list) -> dict:
    return {"info": INFO, "licenses": [], "images": images, "annotations": annotations,
            "categories": [{"id": c["id"], "name": c["name"], "supercategory": "defect"} for c in categories]}
