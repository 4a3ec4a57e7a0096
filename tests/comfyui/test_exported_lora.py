"""Branch LoRAs exported in kohya format load with ComfyUI's stock LoRA loader and give the same
UNet output as that branch of our diffusers path (SAIM off: an ordinary LoRA has no SAIM)."""
from __future__ import annotations

import pytest
import torch

import harness
from dual_fixtures import random_layers
from dualanodiff_core.formats.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint
from dualanodiff_core.cli import main
from dualanodiff_core.runtime.diffusers_adapter import DualAnoDiffUNet
from tiny_models import tiny_unet


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import folder_paths

    unet = tiny_unet(seed=0)
    layers = random_layers(unet, rank=4, seed=11)
    ckpt = DualAnoDiffCheckpoint(layers_to_tensors(layers), make_metadata(4, ["unet_lora", "saim"]))
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "defect.safetensors", ckpt, dtype=torch.float32)
    loras = folder_paths.get_folder_paths("loras")[0]
    assert main(["export-lora", str(path), "--output-dir", loras, "--dtype", "fp32"]) == 0
    folder_paths.filename_list_cache.clear()
    return unet, layers


def _comfy_output(unet, lora_name, x, t, ctx):
    import comfy.model_management

    graph = {
        "1": {"class_type": "HarnessModel", "inputs": {"key": harness.register(harness.comfy_model_from_diffusers(unet))}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora_name, "strength_model": 1.0}},
        "3": {"class_type": "HarnessCaptureModel", "inputs": {"value": ["2", 0], "key": "patched"}},
    }
    patched = harness.run_graph(graph).captured["patched"]
    comfy.model_management.load_models_gpu([patched])
    try:
        with torch.no_grad():
            return patched.model.diffusion_model(x, timesteps=t, context=ctx)
    finally:
        comfy.model_management.unload_all_models()


@pytest.mark.parametrize("branch, row", [("global", 0), ("anomaly", 1)])
def test_exported_branch_lora_matches_our_branch(exported, branch, row):
    unet, layers = exported
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 4, 8, 8, generator=gen)
    ctx = torch.randn(4, 77, 32, generator=gen)
    t = torch.full((4,), 400.0)
    dual = DualAnoDiffUNet(unet, layers)
    dual.strengths.saim = 0.0
    with torch.no_grad():
        ours = dual(x, t, ctx).sample[row::2]
        plain = dual.detach()(x, t, ctx).sample[row::2]
    theirs = _comfy_output(tiny_unet(seed=0), f"defect_{branch}.safetensors", x[row::2], t[row::2], ctx[row::2])
    assert (ours - plain).abs().max() > 1e-2, "the LoRA must change the output for this test to mean anything"
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_exported_text_encoder_lora_keys_are_comfyui_clip_keys(tmp_path):
    """Every exported text-encoder key maps onto a CLIP-L weight in ComfyUI's own LoRA key table."""
    import comfy.lora
    from dualanodiff_core.formats.kohya_export import text_encoder_lora_tensors

    te = {f"text_model.encoder.layers.{i}.self_attn.{p}": (torch.zeros(4, 768), torch.zeros(768, 4))
          for i in range(12) for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    ckpt = DualAnoDiffCheckpoint(te, {})
    exported = {k.rsplit(".", 2)[0] for k in text_encoder_lora_tensors(ckpt)}

    class FakeClip:  # model_lora_keys_clip only reads state_dict() keys
        def state_dict(self):
            return {f"clip_l.transformer.{k}.weight": None for k in te}

    key_map = comfy.lora.model_lora_keys_clip(FakeClip(), {})
    assert exported <= set(key_map), sorted(exported - set(key_map))[:3]
