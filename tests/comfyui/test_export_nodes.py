"""Save Dataset's `format` input through ComfyUI's executor: COCO and YOLO exports of the folder beside the
layout, extended run after run; workflows saved before the input existed load and run as before."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import harness
from export_data import read_yolo_labels, shaped_masks, tree
from workflow_convert import ui_to_api
from workflow_fixtures import pack_module, register_extra_harness_nodes

SHAPES = shaped_masks(32)


@pytest.fixture(scope="module")
def ready(pack):
    register_extra_harness_nodes()
    return pack


def _graph(masks, folder, **extra):
    images = torch.rand(len(masks), 32, 32, 3, generator=torch.Generator().manual_seed(len(masks)))
    inputs = {"images": ["g", 0], "masks": ["m", 0], "anomaly_images": ["g", 0], "object_name": "bottle",
              "defect_name": "scratch", "layout": "pairs", "folder": folder, **extra}
    return {
        "g": {"class_type": "HarnessImage", "inputs": {"key": harness.register(images)}},
        "m": {"class_type": "HarnessMask", "inputs": {"key": harness.register(torch.from_numpy(np.stack(masks)).float())}},
        "save": {"class_type": "DualAnoDiffSaveDataset", "inputs": inputs},
    }


def _root(folder):
    import folder_paths

    return Path(folder_paths.get_output_directory()) / folder


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_format_coco_yolo_exports_every_sample_of_the_folder(ready):
    from pycocotools.coco import COCO

    first = [SHAPES["hole"], SHAPES["diagonal"]]
    harness.run_graph(_graph(first, "export_nodes"))  # no format: the layout only, as before
    root = _root("export_nodes")
    assert not (root / "coco").exists() and not (root / "yolo").exists()
    run = harness.run_graph(_graph([SHAPES["several"], SHAPES["empty"]], "export_nodes", format="coco+yolo"))
    assert any("export_nodes/coco: 4 images" in line for line in run.ui["save"]["text"])
    state = json.loads((root / "coco" / "export.json").read_text())
    assert sorted(state["images"]) == [f"bottle/scratch/{i}" for i in range(4)]  # the earlier samples too
    expected = dict(zip(range(4), first + [SHAPES["several"], SHAPES["empty"]]))
    for name, entry in state["images"].items():
        api = COCO(str(root / "coco" / "annotations" / f"instances_{entry['split']}.json"))
        union = np.zeros((32, 32), bool)
        for ann in api.loadAnns(api.getAnnIds(imgIds=entry["id"])):
            union |= api.annToMask(ann).astype(bool)
        assert np.array_equal(union, expected[int(name.split("/")[-1])])
        label = root / "yolo" / "labels" / entry["split"] / f"{name}.txt"
        drawn = np.zeros((32, 32), bool)
        for cls, m in read_yolo_labels(label, 32, 32):
            assert cls == 0
            drawn |= m
        assert np.array_equal(drawn, expected[int(name.split("/")[-1])])
    harness.run_graph(_graph([SHAPES["pinch"]], "export_nodes", format="coco"))  # the next run extends
    after = json.loads((root / "coco" / "export.json").read_text())
    assert after["images"]["bottle/scratch/4"]["id"] == 5
    assert {k: v for k, v in after["images"].items() if k != "bottle/scratch/4"} == state["images"]


def test_a_workflow_saved_before_the_format_input_loads_and_runs_as_before(ready):
    """A UI-format Save Dataset node with the four widget values it had: the frontend gives the new
    widget its default, `none`, which ComfyUI validates and which writes the layout only."""
    import nodes

    ui = {"nodes": [{"id": 1, "type": "HarnessImage", "widgets_values": ["x"], "inputs": []},
                    {"id": 2, "type": "HarnessMask", "widgets_values": ["y"], "inputs": []},
                    {"id": 3, "type": "DualAnoDiffSaveDataset", "mode": 0,
                     "widgets_values": ["bottle", "scratch", "pairs", "old_workflow"],
                     "inputs": [{"name": "images", "link": 1}, {"name": "masks", "link": 2},
                                {"name": "anomaly_images", "link": 3}]}],
          "links": [[1, 1, 0, 3, 0, "IMAGE"], [2, 2, 0, 3, 1, "MASK"], [3, 1, 0, 3, 2, "IMAGE"]]}
    api = ui_to_api(ui, nodes.NODE_CLASS_MAPPINGS)
    assert api["3"]["inputs"]["format"] == "none"
    graph = _graph([SHAPES["scratch"]], "old_workflow")
    api["1"]["inputs"]["key"], api["2"]["inputs"]["key"] = graph["g"]["inputs"]["key"], graph["m"]["inputs"]["key"]
    harness.run_graph(api)
    del api["3"]["inputs"]["format"]  # an API-format prompt from before the input: the same
    harness.run_graph(api)
    assert sorted(p.name for p in _root("old_workflow").iterdir()) == ["bottle", "manifest.jsonl"]


def test_bad_format_input_refused_with_nothing_written(ready):
    node = pack_module(ready, "nodes.image_nodes").DualAnoDiffSaveDataset()
    images = torch.rand(1, 32, 32, 3)
    masks = torch.from_numpy(SHAPES["scratch"][None]).float()
    kw = dict(images=images, masks=masks, anomaly_images=images, defect_name="scratch", layout="both")
    DualAnoDiffError = pack_module(ready, "dualanodiff_core.errors").DualAnoDiffError  # the pack's own copy
    with pytest.raises(DualAnoDiffError, match="unknown format 'cocoo'; choose one of none, coco, yolo, coco\\+yolo"):
        node.save(object_name="bottle", folder="bad_format", format="cocoo", **kw)
    with pytest.raises(DualAnoDiffError, match="object name 'coco' is the name of the coco export's folder"):
        node.save(object_name="coco", folder="bad_format", format="coco", **kw)
    assert not _root("bad_format").exists()
    node.save(object_name="bottle", folder="other_split", format="yolo", **kw)
    writer = pack_module(ready, "dualanodiff_core.export.writer")
    state_file = _root("other_split") / "yolo" / "export.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "val_share": 0.3}))  # as if exported with --val-share 0.3
    before = tree(_root("other_split"))
    with pytest.raises(DualAnoDiffError, match=r"yolo was made with other settings \(val_share: 0.3 there, 0.1 now\)"):
        node.save(object_name="bottle", folder="other_split", format="yolo", **kw)
    assert tree(_root("other_split")) == before  # refused before the samples were written
    assert writer.DEFAULT_VAL_SHARE == 0.1
