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
        ours = background.reference_then_main(
            _unet_call(patched), x, t, {"c_crossattn": ctx, "transformer_options": options},
            bg, {"c_crossattn": ctx[0::2]})
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


def test_reference_checkpoint_loads_directly(ckpt_dir):
    """A reference-layout file named pytorch_lora_weights.safetensors loads without conversion."""
    import comfy.model_management
    from safetensors.torch import save_file

    from dualanodiff_core.checkpoint import load_checkpoint

    path, _ = write_checkpoint(ckpt_dir, "for_reference.safetensors", with_te=False)
    ckpt = load_checkpoint(path)
    ref = {}
    for key, value in ckpt.tensors.items():
        prefix, suffix = key.split(".attn", 1)
        module = prefix + ".attn" + suffix[0]
        name = suffix[2:]
        if name.startswith("lora_"):
            target, part = name[len("lora_"):].split(".")
            for b in (0, 1):
                ref[f"{module}.processor.to_{target}_lora.{b}.{part}.weight"] = value[b].contiguous()
        elif name.startswith("saim.qkv."):
            for which, chunk in zip("qkv", value.chunk(3)):
                ref[f"{module}.processor.temporal_{which}.{name.rsplit('.', 1)[1]}"] = chunk.contiguous()
        else:
            old = {"saim.norm": "temporal_n", "saim.proj_in": "temporal_i", "saim.proj_out": "temporal_o"}
            head, param = name.rsplit(".", 1)
            ref[f"{module}.processor.{old[head]}.{param}"] = value.contiguous()
    (ckpt_dir / "ref_model").mkdir(exist_ok=True)
    save_file(ref, str(ckpt_dir / "ref_model" / "pytorch_lora_weights.safetensors"))
    import folder_paths

    folder_paths.filename_list_cache.clear()
    from_ref, _ = _patched_model("ref_model/pytorch_lora_weights.safetensors")
    direct, _ = _patched_model("for_reference.safetensors")
    x, ctx, t, _ = _inputs(1)
    comfy.model_management.load_models_gpu([from_ref, direct])
    with torch.no_grad():
        a = _unet_call(from_ref)(x, t, ctx, from_ref.model_options["transformer_options"])
        b = _unet_call(direct)(x, t, ctx, direct.model_options["transformer_options"])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
