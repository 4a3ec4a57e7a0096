"""Placement through stock ComfyUI nodes: a LATENT noise_mask (Set Latent Noise Mask) on the Paired
KSampler's input holds the global rows to the input image outside the mask, and only them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import harness
from tiny_models import tiny_unet
from workflow_fixtures import pack_module, write_checkpoint

SEED, STEPS, CFG = 3, 4, 2.0


@pytest.fixture(scope="module")
def dual_model(pack):
    import folder_paths

    pack_module(pack, "nodes.model_folders").register_model_folders()
    write_checkpoint(Path(folder_paths.get_folder_paths("dualanodiff")[0]), "place.safetensors")
    folder_paths.filename_list_cache.clear()
    loader = pack_module(pack, "nodes.loader_nodes").DualAnoDiffLoader()
    return loader.load(harness.comfy_model_from_diffusers(tiny_unet(seed=0)), "place.safetensors", 1.0, 1.0, 1.0, 1.0)[0]


def test_noise_mask_holds_only_the_global_rows_outside_it(pack, dual_model):
    import nodes as comfy_nodes

    sample = pack_module(pack, "nodes.paired_sampling").paired_ksample
    gen = torch.Generator().manual_seed(9)
    cond = [harness.conditioning(torch.randn(1, 77, 32, generator=gen)) for _ in range(3)]
    image_latent = torch.randn(2, 4, 8, 8, generator=gen)  # stands in for VAE Encode of two normal images
    mask = torch.zeros(2, 64, 64)  # pixel mask as Set Latent Noise Mask takes it: 1 = generate
    mask[0, 16:40, 8:32] = 1
    mask[1, 40:64, 40:64] = 1
    latent = comfy_nodes.SetLatentNoiseMask().set_mask({"samples": image_latent}, mask)[0]

    g, a = sample(dual_model, SEED, STEPS, CFG, "euler", "normal", cond[0], cond[1], cond[2], latent)
    free_g, free_a = sample(dual_model, SEED, STEPS, CFG, "euler", "normal", cond[0], cond[1], cond[2],
                            {"samples": image_latent})
    cells = torch.nn.functional.interpolate(mask[:, None], size=(8, 8), mode="bilinear") > 0  # touched cells
    outside = (~cells).expand(-1, 4, -1, -1)
    torch.testing.assert_close(g["samples"][outside], image_latent[outside], atol=1e-4, rtol=0)
    inside = (mask[:, None, ::8, ::8] > 0).expand(-1, 4, -1, -1)  # cells wholly inside the mask
    assert (g["samples"][inside] - image_latent[inside]).abs().max() > 0.1, "the region is generated"
    # the anomaly rows are not held anywhere: as far from the input as without a mask
    assert (a["samples"] - image_latent).abs()[outside].mean() > 0.5 * (free_a["samples"] - image_latent).abs()[outside].mean()


def test_paste_back_node_keeps_every_outside_pixel_and_cuts_the_mask(pack):
    node = pack.NODE_CLASS_MAPPINGS["DualAnoDiffPasteBack"]()
    gen = torch.Generator().manual_seed(2)
    generated, image = torch.rand(2, 24, 32, 3, generator=gen), torch.rand(2, 24, 32, 3, generator=gen)
    region = torch.zeros(1, 24, 32)
    region[0, 4:16, 10:30] = 1  # one region for both images
    anomaly_mask = torch.ones(2, 24, 32)
    out, mask = node.paste(generated, image, region, anomaly_mask, 3)
    outside = region[0] == 0
    assert torch.equal(out[:, outside], image[:, outside])
    assert torch.equal(out[:, 8:12, 14:26], generated[:, 8:12, 14:26])  # 3 px inside the edge: generated
    assert torch.equal(mask, region.expand(2, -1, -1))


@pytest.mark.parametrize("change, message", [
    ("empty", "the region is empty"),
    ("size", "region is 16x24 pixels but the image is 32x24"),
    ("generated", "generated images are 16x24 but your images 32x24"),
], ids=["empty-region", "region-size", "image-size"])
def test_paste_back_node_bad_input(pack, change, message):
    DualAnoDiffError = pack_module(pack, "dualanodiff_core.errors").DualAnoDiffError
    node = pack.NODE_CLASS_MAPPINGS["DualAnoDiffPasteBack"]()
    generated, image = torch.rand(1, 24, 32, 3), torch.rand(1, 24, 32, 3)
    region, anomaly_mask = torch.ones(1, 24, 32), torch.ones(1, 24, 32)
    if change == "empty":
        region = torch.zeros(1, 24, 32)
    elif change == "size":
        region = torch.ones(1, 24, 16)
    else:
        generated = torch.rand(1, 24, 16, 3)
    with pytest.raises(DualAnoDiffError, match=message):
        node.paste(generated, image, region, anomaly_mask, 3)
