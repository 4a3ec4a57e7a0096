"""The harness itself: pack loading, diffusers->ComfyUI weight transfer, real graph execution."""
from __future__ import annotations

import pytest
import torch

import harness
from tiny_models import tiny_unet


def test_pack_loads_through_comfyui_loader(pack):
    import nodes

    assert isinstance(pack.NODE_CLASS_MAPPINGS, dict)
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert nodes.NODE_CLASS_MAPPINGS[name] is cls
    for name, label in getattr(pack, "NODE_DISPLAY_NAME_MAPPINGS", {}).items():
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[name] == label


def test_torchvision_stand_in_is_gone():
    import importlib.util
    import sys

    assert "torchvision" not in sys.modules or getattr(sys.modules["torchvision"], "__file__", None)
    from transformers.utils import import_utils

    if importlib.util.find_spec("torchvision") is None:
        assert not import_utils.is_torchvision_available()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0)


@pytest.fixture(scope="module")
def comfy_model(unet):
    return harness.comfy_model_from_diffusers(unet)


@pytest.mark.parametrize("t", [999, 10])
def test_comfy_model_matches_diffusers(unet, comfy_model, t):
    gen = torch.Generator().manual_seed(t)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    c = torch.randn(2, 77, 32, generator=gen)
    ts = torch.full((2,), float(t))
    with torch.no_grad():
        ref = unet(x, ts, encoder_hidden_states=c).sample
        out = comfy_model.model.diffusion_model(x, timesteps=ts, context=c)
    assert out.shape == ref.shape
    assert ref.abs().max() > 0.1  # a real signal, not two zero tensors
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _sampler_graph(model_key, pos_key, neg_key, latent_key, seed):
    return {
        "1": {"class_type": "HarnessModel", "inputs": {"key": model_key}},
        "2": {"class_type": "HarnessConditioning", "inputs": {"key": pos_key}},
        "3": {"class_type": "HarnessConditioning", "inputs": {"key": neg_key}},
        "4": {"class_type": "HarnessLatent", "inputs": {"key": latent_key}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "6": {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["5", 0], "key": "latent"}},
    }


@pytest.fixture(scope="module")
def sampler_keys(comfy_model):
    gen = torch.Generator().manual_seed(1)
    return dict(
        model_key=harness.register(comfy_model),
        pos_key=harness.register(harness.conditioning(torch.randn(1, 77, 32, generator=gen))),
        neg_key=harness.register(harness.conditioning(torch.randn(1, 77, 32, generator=gen))),
        latent_key=harness.register({"samples": torch.zeros(2, 4, 8, 8)}),
    )


def test_ksampler_graph_runs_and_is_deterministic(sampler_keys):
    first = harness.run_graph(_sampler_graph(**sampler_keys, seed=42))
    again = harness.run_graph(_sampler_graph(**sampler_keys, seed=42))
    other = harness.run_graph(_sampler_graph(**sampler_keys, seed=43))

    latent = first.captured["latent"]["samples"]
    assert latent.shape == (2, 4, 8, 8)
    assert torch.isfinite(latent).all()
    assert first.outputs["5"][0]["samples"] is latent
    torch.testing.assert_close(again.captured["latent"]["samples"], latent, atol=0, rtol=0)
    assert not torch.allclose(other.captured["latent"]["samples"], latent)


def test_invalid_graph_reports_errors(sampler_keys):
    graph = _sampler_graph(**sampler_keys, seed=1)
    graph["5"]["inputs"]["sampler_name"] = "no_such_sampler"
    ok, errors = harness.validate(graph)
    assert not ok
    assert "5" in errors["node_errors"]
    with pytest.raises(AssertionError, match="validation"):
        harness.run_graph(graph)


def test_builtin_extra_nodes_load():
    import nodes

    harness.load_extra_nodes("nodes_custom_sampler")
    assert "SamplerCustom" in nodes.NODE_CLASS_MAPPINGS


def test_execution_error_is_reported(sampler_keys):
    graph = _sampler_graph(**{**sampler_keys, "model_key": "never-registered"}, seed=1)
    with pytest.raises(AssertionError, match="HarnessModel #1.*never-registered"):
        harness.run_graph(graph)
