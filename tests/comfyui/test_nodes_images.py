"""Mask, U-2-Net, dataset and two-LoRA loader nodes through ComfyUI's executor."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import harness
from dualanodiff_core import load_dual_unet
from tiny_models import tiny_unet
from workflow_fixtures import pack_module, register_extra_harness_nodes, write_checkpoint


@pytest.fixture(scope="module")
def ready(pack):
    register_extra_harness_nodes()
    pack_module(pack, "nodes.model_folders").register_model_folders()
    return pack


def _anomaly_images():
    images = torch.full((2, 32, 32, 3), 0.5)
    images[0, 8:16, 8:20] = torch.tensor([0.9, 0.2, 0.1])
    return images  # image 1 holds no anomaly


def _mask_graph(images, method="threshold", **extra):
    graph = {
        "img": {"class_type": "HarnessImage", "inputs": {"key": harness.register(images)}},
        "em": {"class_type": "DualAnoDiffExtractMask", "inputs": {
            "anomaly_image": ["img", 0], "method": method, "threshold": 0.0, "grow": extra.pop("grow", 0),
            "blur": extra.pop("blur", 0.0), **extra}},
        "m": {"class_type": "HarnessCaptureMask", "inputs": {"value": ["em", 0], "key": "mask"}},
        "s": {"class_type": "HarnessCaptureMask", "inputs": {"value": ["em", 1], "key": "soft"}},
        "p": {"class_type": "HarnessCaptureImage", "inputs": {"value": ["em", 2], "key": "preview"}},
    }
    return graph


def test_extract_mask_threshold(ready):
    run = harness.run_graph(_mask_graph(_anomaly_images()))
    mask, soft, preview = run.captured["mask"], run.captured["soft"], run.captured["preview"]
    assert mask.shape == soft.shape == (2, 32, 32) and preview.shape == (2, 32, 32, 3)
    expected = torch.zeros(32, 32)
    expected[8:16, 8:20] = 1
    torch.testing.assert_close(mask[0], expected)
    assert mask[1].sum() == 0
    grown = harness.run_graph(_mask_graph(_anomaly_images(), grow=2, blur=2.0))
    assert grown.captured["mask"][0].sum() > mask[0].sum()
    assert ((grown.captured["soft"][0] > 0) & (grown.captured["soft"][0] < 1)).any()


@pytest.mark.parametrize("method, hint", [("u2net", "models/u2net"), ("sam", "models/sams")])
def test_extract_mask_without_its_model_names_the_folder(ready, method, hint):
    with pytest.raises(AssertionError, match=hint):
        harness.run_graph(_mask_graph(_anomaly_images(), method=method))


def red_detector_u2netp() -> dict:
    """u2netp.pth weights whose output is known: every conv zero and every batch norm the identity,
    except one path that carries the (normalised) red channel from the input through stage1, stage1d
    and side1 into the fused output, so d0 = sigmoid(relu(red)): a map that is high exactly where the
    image is reddest and flat on a flat image."""
    from dualanodiff_core.masks.u2net import U2NETP

    sd = U2NETP().state_dict()
    for key, value in sd.items():
        if key.endswith("running_var") or (".bn_s1." in key and key.endswith("weight")):
            value.fill_(1.0)
        elif value.is_floating_point():
            value.zero_()
    sd["stage1.rebnconvin.conv_s1.weight"][0, 0, 1, 1] = 1.0   # stage 1, channel 0 <- red
    sd["stage1d.rebnconvin.conv_s1.weight"][0, 64, 1, 1] = 1.0  # decoder stage 1 <- its stage-1 skip
    sd["side1.weight"][0, 0, 1, 1] = 1.0
    sd["outconv.weight"][0, 0, 0, 0] = 1.0
    return sd


@pytest.fixture(scope="module")
def u2net_file(ready):
    import folder_paths

    path = Path(folder_paths.get_folder_paths("u2net")[0]) / "u2netp.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(red_detector_u2netp(), path)
    folder_paths.filename_list_cache.clear()
    return path.name


def test_u2net_loader_feeds_masks_and_background(u2net_file):
    from workflow_fixtures import StubVAE

    images = _anomaly_images()
    graph = _mask_graph(images, method="u2net", u2net=["u2", 0])
    graph["u2"] = {"class_type": "DualAnoDiffU2NetLoader", "inputs": {"model_name": u2net_file}}
    graph["vae"] = {"class_type": "HarnessVae", "inputs": {"key": harness.register(StubVAE())}}
    graph["bg"] = {"class_type": "DualAnoDiffBackground", "inputs": {"image": ["img", 0], "vae": ["vae", 0], "u2net": ["u2", 0]}}
    graph["bgc"] = {"class_type": "HarnessCaptureBackground", "inputs": {"value": ["bg", 0], "key": "bg"}}
    graph["bgp"] = {"class_type": "HarnessCaptureImage", "inputs": {"value": ["bg", 1], "key": "bg_pixels"}}
    run = harness.run_graph(graph)
    # the red detector finds exactly the red rectangle (threshold 0 = U-2-Net's default 0.5), and nothing
    # on the flat grey image (a flat saliency map is never stretched into a mask)
    expected = torch.zeros(2, 32, 32)
    expected[0, 8:16, 8:20] = 1
    torch.testing.assert_close(run.captured["mask"], expected)
    # background: the salient object (the red rectangle) blacked out, everything else kept
    pixels, bg = run.captured["bg_pixels"], run.captured["bg"]
    ring = torch.zeros(32, 32, dtype=torch.bool)  # the rectangle's edge, 1 px either side: partly salient
    ring[7:17, 7:21] = True
    ring[9:15, 9:19] = False
    far = torch.ones(32, 32, dtype=torch.bool)
    far[7:17, 7:21] = False
    torch.testing.assert_close(pixels[0][far], images[0][far])
    torch.testing.assert_close(pixels[0, 9:15, 9:19], torch.zeros(6, 10, 3), atol=1e-3, rtol=0)
    assert (pixels[0][ring] <= images[0][ring] + 1e-6).all() and (pixels[0][ring] >= 0).all()
    torch.testing.assert_close(pixels[1], images[1])
    torch.testing.assert_close(bg["samples"], StubVAE().encode(pixels))
    torch.testing.assert_close(bg["zero"], StubVAE().encode(torch.full((1, 32, 32, 3), 0.5)))


def test_missing_weights_name_folder_and_file(ready):
    graph = {"u2": {"class_type": "DualAnoDiffU2NetLoader", "inputs": {"model_name": "u2net.pth"}},
             "c": {"class_type": "HarnessCaptureU2NetModel", "inputs": {"value": ["u2", 0], "key": "x"}}}
    ok, errors = harness.validate(graph)
    assert not ok  # not in the folder's list: ComfyUI's validation names the value
    node = pack_module(ready, "nodes.loader_nodes").DualAnoDiffU2NetLoader()
    with pytest.raises(FileNotFoundError, match="u2net.pth.*'u2net' model folder.*u2netp.pth"):
        node.load("u2net.pth")


def _save_graph(images, masks, parts, object_name="bottle", defect_name="broken_large", layout="both"):
    return {
        "g": {"class_type": "HarnessImage", "inputs": {"key": harness.register(images)}},
        "a": {"class_type": "HarnessImage", "inputs": {"key": harness.register(parts)}},
        "m": {"class_type": "HarnessMask", "inputs": {"key": harness.register(masks)}},
        "save": {"class_type": "DualAnoDiffSaveDataset", "inputs": {
            "images": ["g", 0], "masks": ["m", 0], "anomaly_images": ["a", 0], "object_name": object_name,
            "defect_name": defect_name, "layout": layout, "folder": "dataset_test"}},
    }


def test_save_dataset_layouts_numbering_and_manifest(ready):
    import folder_paths

    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 16, 16)
    masks[0, 4:8, 4:8] = 1
    first = harness.run_graph(_save_graph(images, masks, images * 0.5))
    harness.run_graph(_save_graph(images, masks, images * 0.5))
    root = Path(folder_paths.get_output_directory()) / "dataset_test"
    pairs = root / "bottle" / "broken_large"
    for sub in ("image", "fg", "mask"):
        assert sorted(p.name for p in (pairs / sub).iterdir()) == ["0.png", "1.png", "2.png", "3.png"]
    assert sorted(p.name for p in (root / "bottle" / "test" / "broken_large").iterdir()) == [f"{i:03d}.png" for i in range(4)]
    assert (root / "bottle" / "ground_truth" / "broken_large" / "003_mask.png").is_file()
    from PIL import Image

    saved_mask = torch.from_numpy(__import__("numpy").array(Image.open(pairs / "mask" / "0.png"))).float() / 255
    torch.testing.assert_close(saved_mask, masks[0])
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and lines[3]["pairs"]["index"] == 3 and lines[1]["mask_empty"]
    assert first.ui["save"]["images"][0]["type"] == "output"


@pytest.mark.parametrize("field, value", [("object_name", "../escape"), ("defect_name", "a/b"), ("object_name", "")])
def test_save_dataset_refuses_path_escapes(ready, field, value):
    images = torch.rand(1, 8, 8, 3)
    graph = _save_graph(images, torch.zeros(1, 8, 8), images)
    graph["save"]["inputs"][field] = value
    with pytest.raises(AssertionError, match="not allowed"):
        harness.run_graph(graph)


def test_two_lora_loader_matches_diffusers_without_saim(ready):
    """Exported kohya LoRAs as the two branches == the checkpoint's branch LoRAs with SAIM off."""
    import comfy.model_management
    import folder_paths

    from dualanodiff_core.cli import main

    loras = Path(folder_paths.get_folder_paths("loras")[0])
    path, _ = write_checkpoint(loras, "pair_source.safetensors")
    assert main(["export-lora", str(path), "--output-dir", str(loras), "--dtype", "fp32", "--name", "pair"]) == 0
    folder_paths.filename_list_cache.clear()
    graph = {
        "m": {"class_type": "HarnessModel", "inputs": {"key": harness.register(harness.comfy_model_from_diffusers(tiny_unet(seed=0)))}},
        "l": {"class_type": "DualAnoDiffLoraPairLoader", "inputs": {"model": ["m", 0], "lora_global": "pair_global.safetensors",
                                                                   "lora_anomaly": "pair_anomaly.safetensors", "strength_global": 1.0, "strength_anomaly": 1.0}},
        "c": {"class_type": "HarnessCaptureModel", "inputs": {"value": ["l", 0], "key": "model"}},
    }
    patched = harness.run_graph(graph).captured["model"]
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 4, 8, 8, generator=gen)
    ctx = torch.randn(2, 77, 32, generator=gen).repeat(2, 1, 1)
    t = torch.full((4,), 300.0)
    dual = load_dual_unet(tiny_unet(seed=0), path)
    dual.strengths.saim = 0.0
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        ours = patched.model.diffusion_model(x, timesteps=t, context=ctx,
                                             transformer_options=dict(patched.model_options["transformer_options"]))
        ref = dual(x, t, ctx).sample
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
