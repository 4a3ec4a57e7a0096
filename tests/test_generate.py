"""`dualanodiff generate`: layouts, manifest, seeds, resume, BCM backgrounds, bad names."""
import json

import numpy as np
import pytest
from PIL import Image

from dual_fixtures import random_layers
from dualanodiff_core.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint
from dualanodiff_core.cli import main
from dualanodiff_core.diffusers_adapter import attention_modules, module_key
from synthetic_data import write_object_masks
from tiny_models import tiny_unet


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    folder = tmp_path_factory.mktemp("ckpts")
    for bcm in (False, True):
        unet = tiny_unet()
        layers = random_layers(unet, rank=4, bcm=bcm, seed=7)
        keys = {module_key(p): p for p in attention_modules(unet)}
        comps = ["unet_lora", "saim"] + (["bcm"] if bcm else [])
        ckpt = DualAnoDiffCheckpoint(layers_to_tensors(layers, keys), make_metadata(4, comps))
        out[bcm] = save_checkpoint(folder / f"bcm{int(bcm)}.safetensors", ckpt)
    return out


def _generate(tiny_sd, ckpt, out, *extra):
    return main(["generate", "--base-model", str(tiny_sd), "--checkpoint", str(ckpt), "--output-dir", str(out),
                 "--object", "bottle", "--defect", "scratch", "--resolution", "64", "--steps", "3", *extra])


def _pixels(path):
    return np.asarray(Image.open(path))


def test_layout_manifest_and_mvtec(tiny_sd, checkpoints, tmp_path):
    assert _generate(tiny_sd, checkpoints[False], tmp_path, "-n", "3", "--batch-size", "2", "--mvtec-layout") == 0
    root = tmp_path / "bottle" / "scratch"
    for sub in ("image", "fg", "mask"):
        assert sorted(p.name for p in (root / sub).iterdir()) == ["0.png", "1.png", "2.png"]
    assert _pixels(root / "image" / "0.png").shape == (64, 64, 3)
    assert _pixels(root / "mask" / "0.png").shape == (64, 64)
    assert set(np.unique(_pixels(root / "mask" / "1.png"))) <= {0, 255}
    assert (tmp_path / "bottle" / "test" / "scratch" / "002.png").is_file()
    assert (tmp_path / "bottle" / "ground_truth" / "scratch" / "002_mask.png").is_file()
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    assert [e["index"] for e in lines] == [0, 1, 2] and [e["seed"] for e in lines] == [0, 1, 2]
    assert lines[0]["scheduler"] == "pndm" and lines[0]["steps"] == 3 and isinstance(lines[0]["mask_empty"], bool)
    mask = _pixels(root / "mask" / "2.png") > 0
    assert lines[2]["mask_empty"] == (not mask.any())


def test_seeds_batches_and_resume(tiny_sd, checkpoints, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _generate(tiny_sd, checkpoints[False], a, "-n", "4", "--batch-size", "4") == 0
    assert _generate(tiny_sd, checkpoints[False], b, "-n", "2", "--batch-size", "1") == 0
    first = (b / "bottle/scratch/image/0.png").stat().st_mtime_ns
    assert _generate(tiny_sd, checkpoints[False], b, "-n", "4", "--batch-size", "1") == 0  # resumes at 2
    assert (b / "bottle/scratch/image/0.png").stat().st_mtime_ns == first, "finished samples are never rewritten"
    for i in range(4):
        for sub in ("image", "fg"):
            assert np.array_equal(_pixels(a / f"bottle/scratch/{sub}/{i}.png"), _pixels(b / f"bottle/scratch/{sub}/{i}.png")), \
                "a sample depends on its seed only, not on the batch it ran in"
    assert len((b / "bottle/scratch/manifest.jsonl").read_text().splitlines()) == 4
    assert _generate(tiny_sd, checkpoints[False], c, "-n", "1", "--seed", "100") == 0
    assert not np.array_equal(_pixels(a / "bottle/scratch/fg/0.png"), _pixels(c / "bottle/scratch/fg/0.png"))


def test_bcm_backgrounds(tiny_sd, checkpoints, mvtec_bottle, tmp_path):
    names = [p.stem for p in sorted((mvtec_bottle / "train" / "good").iterdir())]
    masks = write_object_masks(tmp_path / "objects", names)
    assert _generate(tiny_sd, checkpoints[True], tmp_path / "o", "-n", "2", "--backgrounds",
                     str(mvtec_bottle / "train" / "good"), "--object-masks", str(masks)) == 0
    entry = json.loads((tmp_path / "o/bottle/scratch/manifest.jsonl").read_text().splitlines()[0])
    assert entry["bcm"] is True and entry["guidance"] == 2.0
