"""Defect-type classification in `dualanodiff evaluate --classify`: the accuracy against a hand count, the
ResNet-34 loading torchvision's file layout, and the task end to end on a two-type category."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dualanodiff_core.cli import main
from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.evaluation.classifier import ResNet34, accuracy, load_imagenet_weights
from synthetic_data import write_mvtec_category


def test_accuracy_is_the_hand_count():
    predicted = ["scratch", "stain", "scratch", "scratch", "stain"]
    actual = ["scratch", "scratch", "stain", "scratch", "stain"]
    # scratch: 3 test defects, 2 called scratch; stain: 2, 1 called stain; overall 3 of 5
    assert accuracy(predicted, actual) == {"accuracy": 3 / 5, "per_defect": {"scratch": 2 / 3, "stain": 1 / 2}}
    with pytest.raises(ValueError):
        accuracy(["a"], [])


def test_resnet34_loads_a_torchvision_layout_file_except_its_head(tmp_path):
    imagenet = ResNet34(1000)
    state = {k: v for k, v in imagenet.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) == 182 and state["layer3.5.conv2.weight"].shape == (256, 256, 3, 3)  # torchvision's key count
    assert "layer2.0.downsample.1.running_var" in state and "layer1.0.downsample.0.weight" not in state
    torch.save(state, tmp_path / "resnet34-b627a593.pth")
    model = ResNet34(3)
    load_imagenet_weights(model, tmp_path / "resnet34-b627a593.pth")
    assert torch.equal(model.layer4[2].bn2.running_mean, imagenet.layer4[2].bn2.running_mean)
    assert model.fc.weight.shape == (3, 512)
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4")}, tmp_path / "resnet18ish.pth")
    with pytest.raises(DualAnoDiffError, match=r"resnet18ish.pth lacks layer4.0.conv1.weight.*so it is no ResNet-34"):
        load_imagenet_weights(ResNet34(3), tmp_path / "resnet18ish.pth")


@pytest.fixture(scope="module")
def two_types(tmp_path_factory):
    """Blue scratches and, as a second defect type, the same scratches in red."""
    cat = write_mvtec_category(tmp_path_factory.mktemp("cls") / "bottle", n=9, size=32)
    for sub, suffix in (("test", ""), ("ground_truth", "_mask")):
        shutil.copytree(cat / sub / "scratch", cat / sub / "stain")
    for path in (cat / "test" / "stain").iterdir():
        img = np.asarray(Image.open(path)).copy()
        blue = (img == (20, 20, 200)).all(-1)
        img[blue] = (200, 20, 20)
        Image.fromarray(img).save(path)
    return cat


def test_classification_end_to_end(two_types, tmp_path, capsys):
    argv = ["evaluate", "--mvtec", str(two_types), "--baselines", "real-only", "--classify", "--classifier-steps", "12",
            "--output-dir", str(tmp_path / "out"), "--resolution", "32", "--base-width", "4", "--epochs", "1",
            "--samples-per-epoch", "16", "--batch-size", "8", "--select-last"]
    assert main(argv) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    c = m["sets"]["real-only"]["classification"]
    seed0 = m["sets"]["real-only"]["seeds"]["0"]["classification"]
    assert m["test_set"]["per_defect"] == {"scratch": 6, "stain": 6}
    # the overall accuracy is the per-type accuracies weighted by their test counts (6 each)
    assert seed0["accuracy"] == pytest.approx(sum(seed0["per_defect"].values()) / 2)
    assert c["mean"] == seed0["accuracy"] and c["mean"] >= 0.75, c  # blue or red: learnt from 3 shots of each
    assert m["protocol"]["classifier"] == {"steps": 12, "batch_size": 8, "lr": 1e-4, "calibration_batches": 8, "weights": None, "pretrained": False}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Defect-type classification" in report and "trained from scratch" in report
    assert "| real-only | " in capsys.readouterr().out.split("defect-type classification accuracy")[1]
    # a second run reads the finished classifier's result back
    first = (tmp_path / "out" / "classifiers" / "real-only" / "seed0.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (tmp_path / "out" / "classifiers" / "real-only" / "seed0.json").stat().st_mtime_ns == first
