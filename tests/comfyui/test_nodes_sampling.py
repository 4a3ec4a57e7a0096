"""Loader and sampling nodes in graphs run by ComfyUI's real executor (tiny CPU models)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import harness
from tiny_models import tiny_unet
from workflow_fixtures import (
    FakeClip,
    ForeignAttentionReplace,
    StubVAE,
    pack_module,
    register_extra_harness_nodes,
    tiny_controlnet,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def folders(pack):
    import folder_paths

    register_extra_harness_nodes()
    harness.add_harness_node("HarnessForeignReplace", ForeignAttentionReplace)
    pack_module(pack, "nodes.model_folders").register_model_folders()
    ckpt_dir = Path(folder_paths.get_folder_paths("dualanodiff")[0])
    write_checkpoint(ckpt_dir, "plain.safetensors")
    write_checkpoint(ckpt_dir, "bcm.safetensors", bcm=True)
    folder_paths.filename_list_cache.clear()
    return ckpt_dir


def _cond(seed, rows=1):
    gen = torch.Generator().manual_seed(seed)
    return harness.register(harness.conditioning(torch.randn(rows, 77, 32, generator=gen)))


@pytest.fixture(scope="module")
def keys(folders):
    return {
        "model": harness.register(harness.comfy_model_from_diffusers(tiny_unet(seed=0))),
        "clip": harness.register(FakeClip()),
        "pos_g": _cond(1), "pos_a": _cond(2), "neg": _cond(3),
    }


def _base_graph(keys, checkpoint="plain.safetensors", n_pairs=2, model_node=None):
    return {
        "m": {"class_type": "HarnessModel", "inputs": {"key": keys["model"]}},
        "c": {"class_type": "HarnessClip", "inputs": {"key": keys["clip"]}},
        "load": {"class_type": "DualAnoDiffLoader", "inputs": {
            "model": model_node or ["m", 0], "clip": ["c", 0], "checkpoint": checkpoint, "strength_global": 1.0,
            "strength_anomaly": 1.0, "strength_saim": 1.0, "strength_clip": 1.0}},
        "pg": {"class_type": "HarnessConditioning", "inputs": {"key": keys["pos_g"]}},
        "pa": {"class_type": "HarnessConditioning", "inputs": {"key": keys["pos_a"]}},
        "ng": {"class_type": "HarnessConditioning", "inputs": {"key": keys["neg"]}},
        "lat": {"class_type": "HarnessLatent", "inputs": {"key": harness.register({"samples": torch.zeros(n_pairs, 4, 8, 8)})}},
    }


def _paired_sampler(graph, seed=7, model=("load", 0), positive_global=("pg", 0), background=None, cfg=2.5):
    graph["ks"] = {"class_type": "DualAnoDiffPairedKSampler", "inputs": {
        "model": list(model), "seed": seed, "steps": 3, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal",
        "positive_global": list(positive_global), "positive_anomaly": ["pa", 0], "negative": ["ng", 0],
        "latent_image": ["lat", 0], "denoise": 1.0}}
    if background:
        graph["ks"]["inputs"]["background"] = list(background)
    graph["cg"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["ks", 0], "key": "global"}}
    graph["ca"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["ks", 1], "key": "anomaly"}}
    return graph


@pytest.mark.parametrize("n_pairs", [1, 3, 8])
def test_paired_ksampler_outputs_pairs(keys, n_pairs):
    run = harness.run_graph(_paired_sampler(_base_graph(keys, n_pairs=n_pairs)))
    g, a = run.captured["global"]["samples"], run.captured["anomaly"]["samples"]
    assert g.shape == a.shape == (n_pairs, 4, 8, 8)
    assert torch.isfinite(g).all() and torch.isfinite(a).all()
    assert not torch.allclose(g, a)
    again = harness.run_graph(_paired_sampler(_base_graph(keys, n_pairs=n_pairs)))
    torch.testing.assert_close(again.captured["global"]["samples"], g, atol=0, rtol=0)


def test_pairs_are_independent_of_each_other(pack, keys):
    """Pair 0 sampled alone with pair 0's noise equals pair 0 of a 3-pair batch: no coupling across pairs."""
    import comfy.sample

    full = harness.run_graph(_paired_sampler(_base_graph(keys, n_pairs=3)))
    noise = comfy.sample.prepare_noise(torch.zeros(6, 4, 8, 8), 7)
    graph = _base_graph(keys)
    graph["cap"] = {"class_type": "HarnessCaptureModel", "inputs": {"value": ["load", 0], "key": "m"}}
    patched = harness.run_graph(graph).captured["m"]
    sampling = pack_module(pack, "nodes.sampling")
    positive = sampling.pair_conditioning(harness.OBJECTS[keys["pos_g"]], harness.OBJECTS[keys["pos_a"]])
    out = comfy.sample.sample(patched, noise[:2], 3, 2.5, "euler", "normal", positive, harness.OBJECTS[keys["neg"]],
                              torch.zeros(2, 4, 8, 8), seed=7)
    torch.testing.assert_close(out[0], full.captured["global"]["samples"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], full.captured["anomaly"]["samples"][0], atol=1e-5, rtol=1e-5)


def _stock_graph(keys, sampler):
    graph = _base_graph(keys, n_pairs=2)
    graph["pc"] = {"class_type": "DualAnoDiffPairConditioning", "inputs": {"positive_global": ["pg", 0], "positive_anomaly": ["pa", 0]}}
    graph["pl"] = {"class_type": "DualAnoDiffPairLatents", "inputs": {"latent_global": ["lat", 0]}}
    common = {"model": ["load", 0], "positive": ["pc", 0], "negative": ["ng", 0], "latent_image": ["pl", 0],
              "cfg": 2.5, "sampler_name": "euler", "scheduler": "normal", "steps": 3}
    if sampler == "KSampler":
        graph["ks"] = {"class_type": "KSampler", "inputs": {**common, "seed": 7, "denoise": 1.0}}
        out = ["ks", 0]
    elif sampler == "KSamplerAdvanced":
        graph["ks"] = {"class_type": "KSamplerAdvanced", "inputs": {**common, "add_noise": "enable", "noise_seed": 7,
                                                                    "start_at_step": 0, "end_at_step": 10000,
                                                                    "return_with_leftover_noise": "disable"}}
        out = ["ks", 0]
    else:
        graph.update({
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}},
            "guider": {"class_type": "CFGGuider", "inputs": {"model": ["load", 0], "positive": ["pc", 0], "negative": ["ng", 0], "cfg": 2.5}},
            "sel": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "sig": {"class_type": "BasicScheduler", "inputs": {"model": ["load", 0], "scheduler": "normal", "steps": 3, "denoise": 1.0}},
            "ks": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sel", 0], "sigmas": ["sig", 0], "latent_image": ["pl", 0]}},
        })
        out = ["ks", 0]
    graph["split"] = {"class_type": "DualAnoDiffSplitLatents", "inputs": {"latent": out}}
    graph["cg"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["split", 0], "key": "global"}}
    graph["ca"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["split", 1], "key": "anomaly"}}
    return graph


@pytest.mark.parametrize("sampler", ["KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced"])
def test_stock_samplers_with_pair_helpers_match_the_paired_ksampler(keys, sampler):
    import nodes

    if sampler == "SamplerCustomAdvanced":
        harness.load_extra_nodes("nodes_custom_sampler")
        if "SamplerCustomAdvanced" not in nodes.NODE_CLASS_MAPPINGS:
            pytest.skip("SamplerCustomAdvanced does not exist in this ComfyUI copy")
    paired = harness.run_graph(_paired_sampler(_base_graph(keys, n_pairs=2)))
    stock = harness.run_graph(_stock_graph(keys, sampler))
    for branch in ("global", "anomaly"):
        assert stock.captured[branch]["samples"].shape == (2, 4, 8, 8)
        torch.testing.assert_close(stock.captured[branch]["samples"], paired.captured[branch]["samples"], atol=1e-5, rtol=1e-5)


def test_odd_batch_gets_a_clear_error(keys):
    graph = _base_graph(keys, n_pairs=3)
    graph["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["load", 0], "positive": ["pg", 0], "negative": ["ng", 0], "latent_image": ["lat", 0], "seed": 1,
        "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    graph["cap"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["ks", 0], "key": "x"}}
    with pytest.raises(AssertionError, match="3 rows.*interleaved"):
        harness.run_graph(graph)


def test_missing_branch_is_refused(keys):
    graph = _paired_sampler(_base_graph(keys))
    del graph["ks"]["inputs"]["positive_anomaly"]
    ok, errors = harness.validate(graph)
    assert not ok and "ks" in errors["node_errors"]
    graph = _paired_sampler(_base_graph(keys))
    graph["pa"] = {"class_type": "HarnessConditioning", "inputs": {"key": _cond(5, rows=2)}}
    with pytest.raises(AssertionError, match="one prompt per branch"):
        harness.run_graph(graph)


def test_paired_ksampler_refuses_a_plain_model(keys):
    graph = _paired_sampler(_base_graph(keys), model=("m", 0))
    with pytest.raises(AssertionError, match="needs a MODEL from"):
        harness.run_graph(graph)


def _background_nodes(graph, with_mask=True):
    image = torch.full((1, 64, 64, 3), 0.7)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    graph["img"] = {"class_type": "HarnessImage", "inputs": {"key": harness.register(image)}}
    graph["vae"] = {"class_type": "HarnessVae", "inputs": {"key": harness.register(StubVAE())}}
    graph["mask"] = {"class_type": "HarnessMask", "inputs": {"key": harness.register(mask)}}
    graph["bg"] = {"class_type": "DualAnoDiffBackground", "inputs": {"image": ["img", 0], "vae": ["vae", 0]}}
    if with_mask:
        graph["bg"]["inputs"]["mask"] = ["mask", 0]
    graph["bgcap"] = {"class_type": "HarnessCaptureBackground", "inputs": {"value": ["bg", 0], "key": "bg"}}
    graph["bgprev"] = {"class_type": "HarnessCaptureImage", "inputs": {"value": ["bg", 1], "key": "preview"}}
    return graph


def test_bcm_background_node_and_sampling(keys):
    graph = _paired_sampler(_background_nodes(_base_graph(keys, "bcm.safetensors")), background=("bg", 0))
    run = harness.run_graph(graph)
    bg, preview = run.captured["bg"], run.captured["preview"]
    assert bg["samples"].shape == (1, 4, 8, 8) and bg["zero"].shape == (1, 4, 8, 8)
    assert preview.shape == (1, 64, 64, 3)
    assert preview[0, 32, 32].abs().max() == 0 and torch.allclose(preview[0, 2, 2], torch.full((3,), 0.7))
    torch.testing.assert_close(bg["zero"], StubVAE().encode(torch.full((1, 64, 64, 3), 0.5)))  # mid-grey: 0 in [-1, 1]
    with_bg = run.captured["global"]["samples"]
    again = harness.run_graph(_paired_sampler(_background_nodes(_base_graph(keys, "bcm.safetensors")), background=("bg", 0)))
    torch.testing.assert_close(again.captured["global"]["samples"], with_bg, atol=0, rtol=0)
    without = harness.run_graph(_paired_sampler(_base_graph(keys, "bcm.safetensors")))
    assert not torch.allclose(without.captured["global"]["samples"], with_bg)


def test_background_on_a_checkpoint_without_bcm_is_refused(keys):
    graph = _paired_sampler(_background_nodes(_base_graph(keys, "plain.safetensors")), background=("bg", 0))
    with pytest.raises(AssertionError, match="no BCM weights"):
        harness.run_graph(graph)


def test_background_without_mask_or_u2net_names_the_folder(keys):
    graph = _background_nodes({}, with_mask=False)
    with pytest.raises(AssertionError, match="models/u2net"):
        harness.run_graph(graph)


def test_apply_background_for_stock_samplers_matches_paired_ksampler(keys):
    paired = harness.run_graph(_paired_sampler(_background_nodes(_base_graph(keys, "bcm.safetensors")), background=("bg", 0)))
    graph = _background_nodes(_stock_graph(keys, "KSampler"))
    graph["load"]["inputs"]["checkpoint"] = "bcm.safetensors"
    graph["ab"] = {"class_type": "DualAnoDiffApplyBackground", "inputs": {"model": ["load", 0], "background": ["bg", 0], "seed": 7}}
    graph["ks"]["inputs"]["model"] = ["ab", 0]
    stock = harness.run_graph(graph)
    torch.testing.assert_close(stock.captured["global"]["samples"], paired.captured["global"]["samples"], atol=1e-5, rtol=1e-5)


def test_foreign_replace_before_the_loader_is_reported(keys):
    graph = _paired_sampler(_base_graph(keys, model_node=["fr", 0]))
    graph["fr"] = {"class_type": "HarnessForeignReplace", "inputs": {"model": ["m", 0]}}
    with pytest.raises(AssertionError, match="already replaced attention.*attn2 of \\('input', 1, 0\\) by .*ip_adapter_like"):
        harness.run_graph(graph)


def test_foreign_replace_after_the_loader_is_reported(keys):
    graph = _paired_sampler(_base_graph(keys), model=("fr", 0))
    graph["fr"] = {"class_type": "HarnessForeignReplace", "inputs": {"model": ["load", 0]}}
    with pytest.raises(AssertionError, match="replaced by another node's attention patch"):
        harness.run_graph(graph)


def test_composed_with_stock_lora_loader_and_controlnet(keys, folders):
    import folder_paths

    from dualanodiff_core.cli import main

    loras = folder_paths.get_folder_paths("loras")[0]
    assert main(["export-lora", str(folders / "plain.safetensors"), "--output-dir", loras, "--dtype", "fp32", "--name", "extra"]) == 0
    folder_paths.filename_list_cache.clear()
    control = tiny_controlnet(harness.OBJECTS[keys["model"]])

    def graph(with_extras):
        g = _base_graph(keys, model_node=["lora", 0] if with_extras else None)
        g["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["m", 0], "lora_name": "extra_global.safetensors", "strength_model": 0.5}}
        g["cn"] = {"class_type": "HarnessControlNet", "inputs": {"key": harness.register(control)}}
        g["hint"] = {"class_type": "HarnessImage", "inputs": {"key": harness.register(torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)))}}
        g["apply"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["pg", 0], "control_net": ["cn", 0], "image": ["hint", 0], "strength": 1.0}}
        return _paired_sampler(g, positive_global=("apply", 0) if with_extras else ("pg", 0))

    composed = harness.run_graph(graph(True))
    plain = harness.run_graph(graph(False))
    g = composed.captured["global"]["samples"]
    assert g.shape == (2, 4, 8, 8) and torch.isfinite(g).all()
    assert not torch.allclose(g, plain.captured["global"]["samples"])
