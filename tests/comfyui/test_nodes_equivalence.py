"""The ComfyUI path (loader node -> patched MODEL) and the diffusers path (load_dual_unet) give the
same UNet output for the same tiny base model and checkpoint, plain and BCM, within fp32 tolerance."""
from __future__ import annotations

import pytest
import torch

import harness
from dualanodiff_core import load_dual_unet
from tiny_models import tiny_unet
from workflow_fixtures import FakeClip, pack_module, register_extra_harness_nodes, write_checkpoint

MAX_DIFF: dict = {}


@pytest.fixture(scope="module")
def ckpt_dir(pack):
    import folder_paths

    register_extra_harness_nodes()
    pack_module(pack, "nodes.model_folders").register_model_folders()
    from pathlib import Path

    return Path(folder_paths.get_folder_paths("dualanodiff")[0])


def _patched_model(name, strengths=(1.0, 1.0, 1.0)):
    graph = {
        "1": {"class_type": "HarnessModel", "inputs": {"key": harness.register(harness.comfy_model_from_diffusers(tiny_unet(seed=0)))}},
        "2": {"class_type": "HarnessClip", "inputs": {"key": harness.register(FakeClip())}},
        "3": {"class_type": "DualAnoDiffLoader", "inputs": {
            "model": ["1", 0], "clip": ["2", 0], "checkpoint": name, "strength_global": strengths[0],
            "strength_anomaly": strengths[1], "strength_saim": strengths[2], "strength_clip": 1.0}},
        "4": {"class_type": "HarnessCaptureModel", "inputs": {"value": ["3", 0], "key": "model"}},
        "5": {"class_type": "HarnessCaptureClip", "inputs": {"value": ["3", 1], "key": "clip"}},
    }
    run = harness.run_graph(graph)
    return run.captured["model"], run.captured["clip"]


def _unet_call(patched):
    dm = patched.model.diffusion_model

    def call(x, t, c_crossattn, transformer_options):
        return dm(x, timesteps=t, context=c_crossattn, transformer_options=dict(transformer_options))

    return call


def _inputs(n_pairs, seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n_pairs, 4, 8, 8, generator=gen)
    prompts = torch.randn(2, 77, 32, generator=gen)
    ctx = prompts.repeat(n_pairs, 1, 1)
    t = torch.full((2 * n_pairs,), 500.0)
    bg = torch.randn(n_pairs, 4, 8, 8, generator=gen)
    return x, ctx, t, bg


@pytest.mark.parametrize("n_pairs", [1, 3])
def test_plain_checkpoint_matches_diffusers(ckpt_dir, n_pairs):
    import comfy.model_management

    write_checkpoint(ckpt_dir, "plain.safetensors")
    patched, clip = _patched_model("plain.safetensors")
    x, ctx, t, _ = _inputs(n_pairs)
    dual = load_dual_unet(tiny_unet(seed=0), ckpt_dir / "plain.safetensors")
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        ours = _unet_call(patched)(x, t, ctx, patched.model_options["transformer_options"])
        ref = dual(x, t, ctx).sample
        base = dual.detach()(x, t, ctx).sample
    assert (ref - base).abs().max() > 1e-2  # the checkpoint changes the output
    diff = (ours - ref).abs().max().item()
    MAX_DIFF[f"plain/{n_pairs}"] = diff
    print(f"max abs difference ComfyUI vs diffusers (plain, {n_pairs} pairs): {diff:.3e}")
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    assert len(clip.patches) == 48  # all text-encoder LoRA layers found a CLIP-L weight


@pytest.mark.parametrize("n_pairs", [1, 2])
def test_bcm_checkpoint_matches_diffusers(pack, ckpt_dir, n_pairs):
    import comfy.model_management

    background = pack_module(pack, "nodes.background")
    write_checkpoint(ckpt_dir, "bcm.safetensors", bcm=True)
    patched, _ = _patched_model("bcm.safetensors")
    x, ctx, t, bg = _inputs(n_pairs)
    dual = load_dual_unet(tiny_unet(seed=0), ckpt_dir / "bcm.safetensors")
    comfy.model_management.load_models_gpu([patched])
    options = patched.model_options["transformer_options"]
    with torch.no_grad():
        ours = background.run_with_background(
            _unet_call(patched), x, t, {"c_crossattn": ctx, "transformer_options": options}, bg)
        ref = dual(x, t, ctx, background=bg).sample
        no_bg = dual(x, t, ctx).sample
    assert (ref - no_bg)[0::2].abs().max() > 1e-3  # the background changes the global rows
    diff = (ours - ref).abs().max().item()
    MAX_DIFF[f"bcm/{n_pairs}"] = diff
    print(f"max abs difference ComfyUI vs diffusers (BCM, {n_pairs} pairs): {diff:.3e}")
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


def test_strengths_zero_give_the_base_model(ckpt_dir):
    import comfy.model_management

    write_checkpoint(ckpt_dir, "plain.safetensors")
    patched, _ = _patched_model("plain.safetensors", strengths=(0.0, 0.0, 0.0))
    x, ctx, t, _ = _inputs(2)
    base = harness.comfy_model_from_diffusers(tiny_unet(seed=0))
    comfy.model_management.load_models_gpu([patched])
    with torch.no_grad():
        ours = _unet_call(patched)(x, t, ctx, patched.model_options["transformer_options"])
        plain = base.model.diffusion_model(x, timesteps=t, context=ctx)
    torch.testing.assert_close(ours, plain, atol=2e-5, rtol=1e-5)


def _lora_product(patch):
    """up @ down of one of ComfyUI's LoRA patches (a LoRAAdapter in 2025, a ("lora", (up, down, ...))
    tuple in March 2024)."""
    weights = patch.weights if hasattr(patch, "weights") else patch[1]
    return weights[0].float() @ weights[1].float()


@pytest.mark.parametrize("bcm", [False, True])
def test_reference_checkpoint_loads_directly(pack, ckpt_dir, bcm):
    """A reference-layout file named pytorch_lora_weights.safetensors loads without conversion and
    gives what the method's spec computes. The file's keys are written from reference-method.md
    section 7 by tests/reference_layout.py and the expected output comes from tests/spec_reference.py,
    both independent of the converter."""
    import comfy.model_management
    import folder_paths
    from safetensors.torch import save_file

    from dual_fixtures import random_layers
    from dualanodiff_core.runtime.diffusers_adapter import attention_modules
    from dualanodiff_core.model.layers import layer_key
    from reference_layout import reference_state_dict
    from spec_reference import spec_forward

    unet = tiny_unet(seed=0)
    layers = random_layers(unet, rank=4, saim=True, bcm=bcm, seed=17)
    by_path = {p: layers[layer_key(p)] for p in attention_modules(unet)}
    gen = torch.Generator().manual_seed(19)
    te_lora = {f"text_model.encoder.layers.{i}.self_attn.{proj}": (torch.randn(4, 768, generator=gen) * 0.01,
                                                                    torch.randn(768, 4, generator=gen) * 0.01)
               for i in range(12) for proj in ("q_proj", "k_proj", "v_proj", "out_proj")}
    sd = reference_state_dict(by_path, bcm=bcm, te_lora=te_lora)
    assert any(".processor.chained_proc.temporal_a" in k for k in sd) == bcm
    name = f"ref_model_{int(bcm)}"
    (ckpt_dir / name).mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt_dir / name / "pytorch_lora_weights.safetensors"))
    folder_paths.filename_list_cache.clear()
    patched, clip = _patched_model(f"{name}/pytorch_lora_weights.safetensors")

    x, ctx, t, bg = _inputs(2)
    comfy.model_management.load_models_gpu([patched])
    options = patched.model_options["transformer_options"]
    with torch.no_grad():
        if bcm:
            ours = pack_module(pack, "nodes.background").run_with_background(
                _unet_call(patched), x, t, {"c_crossattn": ctx, "transformer_options": options}, bg)
        else:
            ours = _unet_call(patched)(x, t, ctx, options)
    expected = spec_forward(tiny_unet(seed=0), by_path, x, torch.tensor(500.0), ctx, background=bg if bcm else None)
    plain = tiny_unet(seed=0)(x, torch.tensor(500.0), ctx).sample
    assert (expected - plain).abs().max() > 1e-2  # the weights matter
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)
    # the shared text-encoder LoRA: to_{q,k,v,out}_lora of layer n act on CLIP-L's {q,k,v,out}_proj of layer n
    assert len(clip.patches) == 48
    for module, (down, up) in te_lora.items():
        key = f"clip_l.transformer.{module}.weight"
        torch.testing.assert_close(_lora_product(clip.patches[key]), up @ down, atol=1e-6, rtol=1e-5)
