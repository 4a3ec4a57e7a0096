"""Paths of the dual UNet that test_diffusers_adapter.py's spec comparisons (all under no_grad) do not
take: autograd on, which is how training runs (SAIM unfolded, branch_math.saim instead of
saim_inference), and BCM's reference pass with a global LoRA strength other than 1. Both found by
scripts/mutation_test.py (docs/testing.md): `o + y` -> `o - y` in saim() and `* scale` -> `/ scale`
in the reference pass's LoRA survived every test."""
import pytest
import torch

from dual_fixtures import dual_unet, layers_by_path, pair_inputs
from spec_reference import spec_forward

T = torch.tensor(500)


@pytest.mark.parametrize("bcm", [False, True])
def test_training_path_matches_spec(bcm):
    dual = dual_unet(bcm=bcm)
    x, ctx, bg = pair_inputs(2)
    background = bg if bcm else None
    with torch.enable_grad():
        got = dual(x, T, ctx, background=background).sample
    assert got.requires_grad, "the training path (autograd on) must be the one under test"
    expected = spec_forward(dual.unet, layers_by_path(dual), x, T, ctx, background=background)
    torch.testing.assert_close(got.detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_strengths_with_bcm_match_spec(grad):
    """The reference pass runs the global LoRA at the global strength (reference-method.md section 4)."""
    dual = dual_unet(bcm=True)
    dual.strengths.global_lora, dual.strengths.anomaly_lora, dual.strengths.saim = 0.5, 1.5, 0.3
    x, ctx, bg = pair_inputs(2)
    with torch.set_grad_enabled(grad):
        got = dual(x, T, ctx, background=bg).sample.detach()
    expected = spec_forward(dual.unet, layers_by_path(dual), x, T, ctx, scales=(0.5, 1.5), saim=0.3, background=bg)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
