"""Defect regions, COCO RLE and YOLO polygons against the formats' own readers: pycocotools (a test
dependency) for RLE, scipy's labelling for the regions, and the tests' own pixel-centre rasteriser for
polygons (tests/export_data.py)."""
import numpy as np
import pytest
from pycocotools import mask as coco_mask
from scipy import ndimage

from dualanodiff_core.export import coco, yolo
from dualanodiff_core.export.regions import label_regions, region_outlines, single_polygon
from dualanodiff_core.export.rle import compress, region_counts
from export_data import iou, rasterise, shaped_masks

SHAPES = shaped_masks(32)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2


def _random_masks(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random(tuple(rng.integers(1, 24, 2))) < rng.uniform(0.1, 0.7) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_regions_are_the_8_connected_components(name):
    mask = SHAPES[name]
    regions = label_regions(mask)
    expected, n = ndimage.label(mask, structure=np.ones((3, 3)))
    assert regions.count == n
    assert len(set(zip(expected[mask].tolist(), regions.labels[mask].tolist()))) == n  # the same partition
    assert not regions.labels[~mask].any()


def test_counts_of_known_shapes():
    assert label_regions(SHAPES["diagonal"]).count == 2       # each one-pixel diagonal stays whole
    assert label_regions(SHAPES["pinch"]).count == 2          # squares touching at a corner are one region
    assert label_regions(SHAPES["hole"]).count == 2           # the island in the hole is its own region
    assert label_regions(SHAPES["empty"]).count == 0


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_rle_is_pycocotools_rle_area_and_bbox_too(name):
    regions = label_regions(SHAPES[name])
    for k, counts in enumerate(region_counts(regions.labels, regions.count), 1):
        region = np.asfortranarray((regions.labels == k).astype(np.uint8))
        theirs = coco_mask.encode(region)
        assert compress(counts) == theirs["counts"].decode()
        assert sum(counts) == region.size
        ours = {"size": list(region.shape), "counts": compress(counts)}
        assert np.array_equal(coco_mask.decode(ours), region)
        assert regions.area[k - 1] == coco_mask.area(theirs)
        assert regions.bbox[k - 1].tolist() == coco_mask.toBbox(theirs).tolist()


def test_rle_and_regions_of_random_masks():
    for mask in _random_masks():
        regions = label_regions(mask)
        assert regions.count == ndimage.label(mask, structure=np.ones((3, 3)))[1]
        decoded = np.zeros(mask.shape, bool)
        for ann in coco.region_annotations(regions, category_id=1):
            decoded |= coco_mask.decode(ann["segmentation"]).astype(bool)
        assert np.array_equal(decoded, mask)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_polygon_holds_exactly_its_region(name):
    """Traced along pixel edges, holes joined by zero-width cuts: pixel centres inside the polygon are the
    region's pixels, one-pixel scratches, one-pixel holes and holes touching the outside included."""
    regions = label_regions(SHAPES[name])
    for k, outline in enumerate(region_outlines(regions), 1):
        polygon = single_polygon(outline)
        assert len(polygon) >= 4 and polygon.min() >= 0 and polygon.max() <= 32
        assert np.array_equal(rasterise(polygon, 32, 32), regions.labels == k)


def test_polygons_of_random_masks():
    for mask in _random_masks(seed=1):
        regions = label_regions(mask)
        for k, outline in enumerate(region_outlines(regions), 1):
            assert np.array_equal(rasterise(single_polygon(outline), *mask.shape), regions.labels == k)


def test_polygons_drop_only_straight_points():
    square = np.zeros((8, 8), bool)
    square[2:6, 1:7] = True
    polygon = single_polygon(region_outlines(label_regions(square))[0])
    assert sorted(map(tuple, polygon.tolist())) == [(1, 2), (1, 6), (7, 2), (7, 6)]


def test_yolo_label_text_normalised_and_back():
    mask = SHAPES["several"]
    text = yolo.label_text(label_regions(mask), class_index=3)
    lines = text.splitlines()
    assert len(lines) == 4 and all(line.split()[0] == "3" for line in lines)
    union = np.zeros_like(mask)
    for line in lines:
        coords = np.array([float(v) for v in line.split()[1:]])
        assert 0 <= coords.min() and coords.max() <= 1
        union |= rasterise(coords.reshape(-1, 2) * 32, 32, 32)
    assert iou(union, mask) == 1.0
    assert yolo.label_text(label_regions(SHAPES["empty"]), 0) == ""


def test_regions_of_a_wide_mask_keep_their_place():
    mask = np.zeros((5, 40), bool)
    mask[4, 37:40] = True   # bottom-right corner
    mask[0, 0] = True       # top-left pixel
    regions = label_regions(mask)
    assert regions.bbox.tolist() == [[0, 0, 1, 1], [37, 4, 3, 1]]
    assert regions.area.tolist() == [1, 3]
