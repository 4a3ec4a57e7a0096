"""`dualanodiff export-dataset`: a written dataset as COCO and YOLO, read back by pycocotools and by the
tests' own YOLO reader; stable categories and splits when exports are extended. Bad input:
tests/test_export_bad_input.py."""
import json
import os
import stat

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from dualanodiff_core.cli import main
from export_data import iou, read_yolo_labels, shaped_masks, tree, write_pairs_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools on numpy 2
SHAPES = shaped_masks(32)
SCRATCH = ["scratch", "diagonal", "empty", "several"]
HOLE = ["hole", "pinch", "border", "full"]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "synthetic"
    write_pairs_dataset(root, "bottle", "scratch", [SHAPES[n] for n in SCRATCH], seed=1)
    write_pairs_dataset(root, "bottle", "hole", [SHAPES[n] for n in HOLE], seed=2)
    return root


def _masks(root):
    """name -> (image bytes, mask) of the written dataset."""
    out = {}
    for leaf in (root / "bottle").iterdir():
        for p in (leaf / "image").iterdir():
            mask = np.asarray(Image.open(leaf / "mask" / p.name)) > 127
            out[f"bottle/{leaf.name}/{p.stem}"] = (p.read_bytes(), mask)
    return out


def _coco_masks(folder, split):
    """name -> (image bytes, union mask, [(category name, region mask)]) as pycocotools reads the export."""
    api = COCO(str(folder / "annotations" / f"instances_{split}.json"))
    names = {c["id"]: c["name"] for c in api.loadCats(api.getCatIds())}
    out = {}
    for img in api.loadImgs(api.getImgIds()):
        anns = api.loadAnns(api.getAnnIds(imgIds=img["id"]))
        regions = [(names[a["category_id"]], api.annToMask(a).astype(bool)) for a in anns]
        union = np.zeros((img["height"], img["width"]), bool)
        for _, m in regions:
            assert not (union & m).any(), "regions of one image never overlap"
            union |= m
        data = (folder / "images" / split / img["file_name"]).read_bytes()
        out[img["file_name"].rsplit(".", 1)[0]] = (data, union, regions, anns)
    return out


def test_coco_export_decodes_to_the_written_masks_pixel_for_pixel(dataset, capsys):
    assert main(["export-dataset", str(dataset), "--format", "coco", "--val-share", "0.3", "--seed", "4"]) == 0
    assert "synthetic/coco: 8 images" in capsys.readouterr().out
    folder = dataset / "coco"
    written = _masks(dataset)
    exported = {**_coco_masks(folder, "train"), **_coco_masks(folder, "val")}
    assert set(exported) == set(written)
    for name, (data, union, regions, anns) in exported.items():
        assert data == written[name][0]                         # the image, byte for byte
        assert np.array_equal(union, written[name][1])          # pycocotools' masks are ours
        assert all(cat == name.split("/")[1] for cat, _ in regions)
        for ann, (_, m) in zip(anns, regions):                  # bbox and area are the region's own
            ys, xs = np.nonzero(m)
            assert ann["area"] == m.sum() and ann["iscrowd"] == 0
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    counts = {n: len(exported[f"bottle/scratch/{i}"][2]) for i, n in enumerate(SCRATCH)}
    assert counts == {"scratch": 1, "diagonal": 2, "empty": 0, "several": 4}  # an image without defect: listed, no annotation
    assert len(exported["bottle/hole/0"][2]) == 2                # the island in the hole is its own region
    doc = json.loads((folder / "annotations" / "instances_train.json").read_text())
    assert [(c["id"], c["name"]) for c in doc["categories"]] == [(1, "hole"), (2, "scratch")]  # sorted by name
    assert doc["annotations"][0]["segmentation"]["size"] == [32, 32]
    assert isinstance(doc["annotations"][0]["segmentation"]["counts"], str)  # compressed RLE


def test_yolo_export_polygons_give_back_the_masks(dataset):
    assert main(["export-dataset", str(dataset), "--format", "yolo", "--val-share", "0.3", "--seed", "4"]) == 0
    folder = dataset / "yolo"
    data = yaml.safe_load((folder / "data.yaml").read_text())
    assert data["names"] == {0: "hole", 1: "scratch"} and data["path"] == str(folder.resolve())
    assert data["train"] == "images/train" and data["val"] == "images/val"
    written, worst = _masks(dataset), 1.0
    found = set()
    for split in ("train", "val"):
        for label in (folder / "labels" / split).rglob("*.txt"):
            name = str(label.relative_to(folder / "labels" / split).with_suffix(""))
            image = folder / "images" / split / f"{name}.png"
            assert image.read_bytes() == written[name][0]
            regions = read_yolo_labels(label, 32, 32)
            union = np.zeros((32, 32), bool)
            for cls, m in regions:
                assert data["names"][cls] == name.split("/")[1]
                union |= m
            worst = min(worst, iou(union, written[name][1]))
            assert np.array_equal(union, written[name][1])      # exact at pixel centres
            found.add(name)
    assert found == set(written) and worst >= 0.95
    assert (folder / "labels" / "train" / "bottle" / "scratch" / "2.txt").read_text() == "" or \
        (folder / "labels" / "val" / "bottle" / "scratch" / "2.txt").read_text() == ""  # the empty mask


def test_both_formats_at_once_and_the_same_split(dataset):
    assert main(["export-dataset", str(dataset), "--format", "coco", "--format", "yolo", "--val-share", "0.5",
                 "--output", str(dataset.parent / "out")]) == 0
    out = dataset.parent / "out"
    coco_split = {s: {p.relative_to(out / "coco" / "images" / s) for p in (out / "coco" / "images" / s).rglob("*.png")}
                  for s in ("train", "val")}
    yolo_split = {s: {p.relative_to(out / "yolo" / "images" / s) for p in (out / "yolo" / "images" / s).rglob("*.png")}
                  for s in ("train", "val")}
    assert coco_split == yolo_split and coco_split["train"] and coco_split["val"]
    assert not (dataset / "coco").exists()


def test_split_depends_on_seed_only_and_share_zero_is_all_train(dataset, tmp_path):
    def split(out, *extra):
        assert main(["export-dataset", str(dataset), "--format", "coco", "--output", str(out), *extra]) == 0
        return json.loads((out / "coco" / "export.json").read_text())["images"]

    a = split(tmp_path / "a", "--val-share", "0.5", "--seed", "1")
    b = split(tmp_path / "b", "--val-share", "0.5", "--seed", "1")
    c = split(tmp_path / "c", "--val-share", "0.5", "--seed", "2")
    assert {k: v["split"] for k, v in a.items()} == {k: v["split"] for k, v in b.items()}
    assert {k: v["split"] for k, v in a.items()} != {k: v["split"] for k, v in c.items()}
    zero = split(tmp_path / "d", "--val-share", "0")
    assert {v["split"] for v in zero.values()} == {"train"}
    val = json.loads((tmp_path / "d" / "coco" / "annotations" / "instances_val.json").read_text())
    assert val["images"] == [] and len(val["categories"]) == 2


def test_exports_of_one_defect_type_at_a_time_merge_with_stable_ids(tmp_path):
    """Per-defect datasets exported into one folder: categories keep their ids (a new type gets the next),
    images and annotations already there keep theirs, and exporting again adds nothing."""
    out = tmp_path / "merged"
    first = write_pairs_dataset(tmp_path / "run_b", "bottle", "scratch", [SHAPES["scratch"], SHAPES["several"]])
    second = write_pairs_dataset(tmp_path / "run_a", "bottle", "crack", [SHAPES["hole"]])
    assert main(["export-dataset", str(first), "--format", "coco,yolo", "--output", str(out)]) == 0
    before = tree(out)
    state = json.loads((out / "coco" / "export.json").read_text())
    assert state["categories"] == [{"id": 1, "name": "scratch"}]
    assert main(["export-dataset", str(second), "--format", "coco,yolo", "--output", str(out)]) == 0
    after = json.loads((out / "coco" / "export.json").read_text())
    assert after["categories"] == [{"id": 1, "name": "scratch"}, {"id": 2, "name": "crack"}]  # never renumbered
    for name, entry in state["images"].items():
        assert after["images"][name] == entry
    for path, data in before.items():  # every image and label written before is untouched
        if path.startswith(("coco/images", "yolo/images", "yolo/labels")):
            assert (out / path).read_bytes() == data
    coco_all = {}
    for split in ("train", "val"):
        doc = json.loads((out / "coco" / "annotations" / f"instances_{split}.json").read_text())
        coco_all.update({img["file_name"]: img["id"] for img in doc["images"]})
        ids = [a["id"] for a in doc["annotations"]]
        assert len(ids) == len(set(ids))
    assert coco_all["bottle/crack/0.png"] == 3 and sorted(coco_all.values()) == [1, 2, 3]
    names = yaml.safe_load((out / "yolo" / "data.yaml").read_text())["names"]
    assert names == {0: "scratch", 1: "crack"}
    crack = next((out / "yolo" / "labels").rglob("crack/0.txt")).read_text()
    assert {line.split()[0] for line in crack.splitlines()} == {"1"}
    snapshot = tree(out)
    assert main(["export-dataset", str(second), "--format", "coco,yolo", "--output", str(out)]) == 0
    assert tree(out) == snapshot  # nothing new: nothing rewritten


def test_node_manifest_with_mvtec_layout_only(tmp_path):
    """The Save Dataset node's manifest (object, defect, mvtec paths) is read as well."""
    root = tmp_path / "node"
    (root / "bottle" / "test" / "scratch").mkdir(parents=True)
    (root / "bottle" / "ground_truth" / "scratch").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "bottle" / "test" / "scratch" / "000.png")
    Image.fromarray(SHAPES["hole"].astype(np.uint8) * 255).save(root / "bottle" / "ground_truth" / "scratch" / "000_mask.png")
    record = {"object": "bottle", "defect": "scratch", "mask_empty": False,
              "mvtec": {"index": 0, "image": "bottle/test/scratch/000.png", "mask": "bottle/ground_truth/scratch/000_mask.png"}}
    (root / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    assert main(["export-dataset", str(root), "--format", "coco", "--val-share", "0"]) == 0
    exported = _coco_masks(root / "coco", "train")
    assert list(exported) == ["bottle/scratch/000"]
    assert np.array_equal(exported["bottle/scratch/000"][1], SHAPES["hole"])


def test_files_get_the_permissions_plain_open_gives(dataset, tmp_path):
    assert main(["export-dataset", str(dataset), "--format", "coco,yolo"]) == 0
    probe = tmp_path / "probe"
    with open(probe, "w"):
        pass
    probe_dir = tmp_path / "probe_dir"
    probe_dir.mkdir()
    file_mode, dir_mode = stat.S_IMODE(os.stat(probe).st_mode), stat.S_IMODE(os.stat(probe_dir).st_mode)
    for fmt in ("coco", "yolo"):
        for p in [dataset / fmt, *(dataset / fmt).rglob("*")]:
            assert stat.S_IMODE(os.stat(p).st_mode) == (dir_mode if p.is_dir() else file_mode), p
    write_pairs_dataset(dataset, "bottle", "new", [SHAPES["scratch"]])  # extending writes files by renames
    assert main(["export-dataset", str(dataset), "--format", "coco,yolo"]) == 0
    for p in (dataset / "coco").rglob("*"):
        assert stat.S_IMODE(os.stat(p).st_mode) == (dir_mode if p.is_dir() else file_mode), p


def test_every_export_dataset_option_has_help():
    import argparse

    from dualanodiff_core.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["export-dataset"]
    assert sub.description
    for action in sub._actions:
        assert action.help and len(action.help) > 10, action.option_strings or action.dest
