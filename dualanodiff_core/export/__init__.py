"""Datasets in the formats detectors read: COCO instance segmentation and YOLO segmentation, exported
from a dataset written in the pairs or mvtec layout (``generate``, the Save Dataset node).

``regions`` (connected components, outlines along pixel edges), ``rle`` (COCO run-length encoding),
``coco`` / ``yolo`` (each format's entries), ``categories`` (stable ids), ``split`` (train/val draw),
``source`` (the samples a manifest lists), ``annotate`` (one sample, every format), ``writer`` (the export
folders, new or extended, never half-written), ``command`` (``dualanodiff export-dataset``). The formats
and their limits: docs/datasets.md.
"""
