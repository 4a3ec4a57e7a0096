"""The shipped placement workflow (example_workflows/dualanodiff_place_on_image.json, through its API
twin) executed by ComfyUI on tiny models: Load Image (region painted as the mask) -> VAE Encode ->
Set Latent Noise Mask -> Repeat Latent Batch -> Paired KSampler -> Paste Back -> Save Dataset. Only the
model sources change (SD 1.5 and its CLIP become a tiny UNet, fixed prompts and a pixel-exact stand-in
VAE); every other node is the workflow's own."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import harness
from tiny_models import tiny_unet
from workflow_fixtures import StubVAE, pack_module, register_extra_harness_nodes, write_checkpoint

API = Path(__file__).resolve().parent / "workflow_api" / "dualanodiff_place_on_image.json"
SIZE = 64
BOX = (slice(16, 40), slice(24, 48))  # rows, columns of the region


class RoundTripVAE(StubVAE):
    """encode: the stub's 8x8 mean pool; decode: its first three channels back to pixels (nearest)."""

    def decode(self, latent):
        x = torch.nn.functional.interpolate(latent[:, :3], scale_factor=8, mode="nearest")
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def _relink(value, links):
    if isinstance(value, list) and len(value) == 2 and tuple(value) in links:
        return list(links[tuple(value)])
    return value


@pytest.fixture(scope="module")
def run(pack):
    import folder_paths
    from PIL import Image

    register_extra_harness_nodes()
    pack_module(pack, "nodes.model_folders").register_model_folders()
    twin = json.loads(API.read_text(encoding="utf-8"))
    write_checkpoint(Path(folder_paths.get_folder_paths("dualanodiff")[0]), twin["10"]["inputs"]["checkpoint"])
    folder_paths.filename_list_cache.clear()

    rng = np.random.default_rng(4)
    rgba = np.concatenate([rng.integers(0, 256, (SIZE, SIZE, 3)), np.full((SIZE, SIZE, 1), 255)], axis=2)
    rgba[BOX + (3,)] = 0  # painted in the mask editor: transparent = Load Image's MASK 1 = the region
    Image.fromarray(rgba.astype(np.uint8), "RGBA").save(Path(folder_paths.get_input_directory()) / twin["50"]["inputs"]["image"])

    gen = torch.Generator().manual_seed(5)
    prompts = {k: harness.register(harness.conditioning(torch.randn(1, 77, 32, generator=gen))) for k in ("11", "12", "13")}
    graph = {"m": {"class_type": "HarnessModel", "inputs": {"key": harness.register(harness.comfy_model_from_diffusers(tiny_unet(seed=0)))}},
             "v": {"class_type": "HarnessVae", "inputs": {"key": harness.register(RoundTripVAE())}}}
    links = {("1", 0): ("m", 0), ("1", 2): ("v", 0)}
    for node_id, node in twin.items():
        if node_id == "1":
            continue
        if node_id in prompts:  # CLIPTextEncode on the Loader's CLIP: fixed embeddings of the tiny UNet's width
            graph[node_id] = {"class_type": "HarnessConditioning", "inputs": {"key": prompts[node_id]}}
            continue
        inputs = {k: _relink(v, links) for k, v in node["inputs"].items() if not (node_id == "10" and k == "clip")}
        graph[node_id] = {"class_type": node["class_type"], "inputs": inputs}
    graph["20"]["inputs"]["steps"] = 4
    graph["c_image"] = {"class_type": "HarnessCaptureImage", "inputs": {"value": ["50", 0], "key": "image"}}
    graph["c_region"] = {"class_type": "HarnessCaptureMask", "inputs": {"value": ["50", 1], "key": "region"}}
    graph["c_placed"] = {"class_type": "HarnessCaptureImage", "inputs": {"value": ["54", 0], "key": "placed"}}
    graph["c_mask"] = {"class_type": "HarnessCaptureMask", "inputs": {"value": ["54", 1], "key": "mask"}}
    graph["c_generated"] = {"class_type": "HarnessCaptureImage", "inputs": {"value": ["21", 0], "key": "generated"}}
    result = harness.run_graph(graph)
    result.output_dir = Path(folder_paths.get_output_directory()) / twin["25"]["inputs"]["folder"]
    result.twin = twin
    return result


def test_region_is_the_painted_mask(run):
    region = run.captured["region"]
    expected = torch.zeros(1, SIZE, SIZE)
    expected[(0,) + BOX] = 1
    assert torch.equal(region, expected)


def test_every_pixel_outside_the_region_is_the_input_images_own(run):
    placed, image = run.captured["placed"], run.captured["image"]
    amount = run.twin["53"]["inputs"]["amount"]
    assert placed.shape == (amount, SIZE, SIZE, 3)
    outside = run.captured["region"][0] == 0
    assert torch.equal(placed[:, outside], image.expand(amount, -1, -1, -1)[:, outside])
    inner = (slice(None), slice(BOX[0].start + 3, BOX[0].stop - 3), slice(BOX[1].start + 3, BOX[1].stop - 3))
    assert torch.equal(placed[inner], run.captured["generated"][inner]), "3 px inside the edge: the generated image"
    assert (placed[inner] - image[inner]).abs().mean() > 0.05, "the region is generated, not kept"
    # the variations (Repeat Latent Batch: one noise per row) differ inside the region
    assert (placed[0][inner[1:]] - placed[1][inner[1:]]).abs().max() > 0.05


def test_mask_lies_inside_the_region(run):
    mask, region = run.captured["mask"], run.captured["region"]
    assert mask.shape == (run.twin["53"]["inputs"]["amount"], SIZE, SIZE)
    assert not mask[:, region[0] == 0].any()


def test_saved_dataset_holds_the_placed_images_and_masks(run):
    from PIL import Image

    files = sorted((run.output_dir / "bottle" / "broken_large" / "image").glob("*.png"))
    assert len(files) == run.twin["53"]["inputs"]["amount"], sorted(run.output_dir.rglob("*"))
    placed = run.captured["placed"]
    for k, path in enumerate(files):
        saved = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(saved, np.rint(placed[k].numpy() * 255).astype(np.uint8))
        mask = np.asarray(Image.open(path.parent.parent / "mask" / path.name).convert("L"))
        np.testing.assert_array_equal(mask > 127, run.captured["mask"][k].numpy() > 0.5)
