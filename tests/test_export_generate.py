"""`dualanodiff generate --format`: the run ends with the COCO/YOLO exports of its finished samples, and an
export it could not extend is refused before any model loads."""
import json
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from dual_fixtures import random_layers
from dualanodiff_core.cli import main
from dualanodiff_core.formats.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint
from tiny_models import tiny_unet


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    unet = tiny_unet()
    ckpt = DualAnoDiffCheckpoint(layers_to_tensors(random_layers(unet, rank=4, seed=7)),
                                 make_metadata(4, ["unet_lora", "saim"]))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "c.safetensors", ckpt)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_generate_writes_the_formats_asked_for(tiny_sd, checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "synthetic"
    argv = ["generate", "--base-model", str(tiny_sd), "--checkpoint", str(checkpoint), "--output-dir", str(out),
            "--object", "bottle", "--defect", "scratch", "--resolution", "64", "--steps", "2", "-n", "2",
            "--mask-threshold", "0.02", "--format", "mvtec,coco", "--format", "yolo", "--val-share", "0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"synthetic/coco: 2 images \(2 train, 0 val\), 1 categories; 2 added now", printed)
    assert (out / "bottle" / "test" / "scratch" / "001.png").is_file()  # mvtec as --mvtec-layout
    doc = json.loads((out / "coco" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["scratch"]
    for img in doc["images"]:
        written = np.asarray(Image.open(out / "bottle" / "scratch" / "mask" / img["file_name"].split("/")[-1])) > 127
        decoded = np.zeros_like(written)
        for ann in (a for a in doc["annotations"] if a["image_id"] == img["id"]):
            decoded |= coco_mask.decode(ann["segmentation"]).astype(bool)
        assert np.array_equal(decoded, written)
    assert sorted(p.name for p in (out / "yolo" / "labels" / "train" / "bottle" / "scratch").iterdir()) == ["0.txt", "1.txt"]

    def no_models(*a, **k):
        raise AssertionError("a refused run must not load models")

    import dualanodiff_core.generation.generate as gen

    monkeypatch.setattr(gen, "load", no_models)
    assert main(argv[:-1] + ["0.5"]) == 2  # the export was made with --val-share 0
    assert "coco was made with other settings (val_share: 0.0 there, 0.5 now)" in capsys.readouterr().err
    assert main(argv + ["-n", "2"]) == 0  # a finished run exported again: nothing added
    assert "2 images (2 train, 0 val), 1 categories; 0 added now" in capsys.readouterr().out
