"""The branch math against the spec computed directly (tests/spec_reference.py)."""
import pytest
import torch

from dualanodiff_core.model import branch_math
from dualanodiff_core.model.layers import BCMFusion, SAIM
from dualanodiff_core.model.pairing import with_background_rows, without_background_rows
from spec_reference import bcm_rows, lora_rows, saim_pairs, saim_params_from_module

PAIR_COUNTS = [1, 2, 3, 5]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("n_pairs", PAIR_COUNTS)
def test_lora_delta_matches_per_row_merged_weights(n_pairs):
    x = torch.randn(2 * n_pairs, 7, 12)
    down, up = torch.randn(2, 4, 12), torch.randn(2, 9, 4)
    scales = torch.tensor([0.7, 1.3])
    got = branch_math.branch_lora_delta(x, down, up, scales)
    assert got.shape == (2 * n_pairs, 7, 9)
    torch.testing.assert_close(got, lora_rows(x, down, up, scales), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_pairs", PAIR_COUNTS)
@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_saim_matches_two_token_softmax_attention(n_pairs, strength):
    saim = SAIM(16)
    for p in saim.parameters():
        p.data.normal_(0, 0.3)
    o = torch.randn(2 * n_pairs, 5, 16)
    with torch.no_grad():
        got = saim(o, strength)
    expected = saim_pairs(o, saim_params_from_module(saim), strength)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_pairs", [1, 3])
def test_triples_give_background_rows_the_global_branch_and_pairs_what_they_had(n_pairs):
    """BCM triples [g, a, r]: the pair rows get exactly the pair math, the background row the global
    LoRA (at the global strength) and no SAIM."""
    from dualanodiff_core.model.attention_step import after_attention, lora_delta
    from dualanodiff_core.model.layers import DualAttentionLayers
    from dualanodiff_core.model.strengths import Strengths

    layers = DualAttentionLayers(16, 16, 16, rank=4, saim=True)
    for p in layers.parameters():
        p.data.normal_(0, 0.3)
    strengths = Strengths(global_lora=0.7, anomaly_lora=1.3)
    h, h_ref = torch.randn(2 * n_pairs, 5, 16), torch.randn(n_pairs, 5, 16)
    triples = with_background_rows(h, h_ref)
    with torch.no_grad():
        got = lora_delta(layers, "q", triples, strengths, group=3)
        torch.testing.assert_close(without_background_rows(got), lora_delta(layers, "q", h, strengths),
                                   atol=1e-5, rtol=1e-5)
        lora = layers.lora("q")
        global_only = (h_ref @ lora.down[0].T @ lora.up[0].T) * 0.7
        torch.testing.assert_close(got[2::3], global_only, atol=1e-5, rtol=1e-5)
        out = after_attention(layers, triples, strengths, group=3)
        torch.testing.assert_close(without_background_rows(out), after_attention(layers, h, strengths),
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(out[2::3], h_ref), "no SAIM on background rows"


def test_saim_strength_zero_returns_input_exactly():
    o = torch.randn(4, 5, 16)
    assert SAIM(16)(o, 0.0) is o


@pytest.mark.parametrize("n_pairs", PAIR_COUNTS)
def test_bcm_fusion_matches_spec(n_pairs):
    bcm = BCMFusion(16)
    for p in bcm.parameters():
        p.data.normal_(0, 0.3)
    h, h_ref = torch.randn(2 * n_pairs, 6, 16), torch.randn(n_pairs, 6, 16)
    with torch.no_grad():
        got = bcm(with_background_rows(h, h_ref))
    expected = bcm_rows(h, h_ref, dict(
        mlp1_w=bcm.mlp_in.weight.detach(), mlp1_b=bcm.mlp_in.bias.detach(),
        mlp2_w=bcm.mlp_out.weight.detach(), mlp2_b=bcm.mlp_out.bias.detach(), gamma=bcm.gamma.detach()))
    torch.testing.assert_close(without_background_rows(got), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1::3], h[1::2]), "anomaly rows must not see the background"
    assert torch.equal(got[2::3], h_ref), "background rows keep their own input"


def test_bcm_gamma_zero_keeps_input():
    bcm = BCMFusion(8)
    h = torch.randn(3, 3, 8)
    torch.testing.assert_close(bcm(h), h)


def test_odd_batch_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="even batch of interleaved"):
        branch_math.branch_lora_delta(torch.randn(3, 2, 4), torch.randn(2, 1, 4), torch.randn(2, 4, 1), torch.ones(2))


def test_bcm_broken_triples_are_reported():
    with pytest.raises(ValueError, match="triples, got 4 rows"):
        BCMFusion(8)(torch.randn(4, 3, 8))


@pytest.mark.parametrize("n_pairs", PAIR_COUNTS)
def test_saim_training_and_inference_paths_agree_with_the_spec(n_pairs):
    saim = SAIM(16)
    for p in saim.parameters():
        p.data.normal_(0, 0.3)
    o = torch.randn(2 * n_pairs, 5, 16)
    expected = saim_pairs(o, saim_params_from_module(saim), 0.7)
    with torch.no_grad():
        fast = saim(o, 0.7)
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(saim(o, 0.7).detach(), expected, atol=1e-5, rtol=1e-5)


def test_saim_inference_weights_follow_parameter_updates():
    saim = SAIM(8)
    o = torch.randn(2, 3, 8)
    with torch.no_grad():
        before = saim(o)
        saim.proj_in.weight.add_(torch.randn_like(saim.proj_in.weight))  # e.g. an optimizer step
        after = saim(o)
    torch.testing.assert_close(after, saim_pairs(o, saim_params_from_module(saim)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, after)


def test_saim_runs_on_inference_mode_weights():
    """ComfyUI samples under torch.inference_mode, where layer copies are inference tensors."""
    with torch.inference_mode():
        saim = SAIM(8)
        o = torch.randn(2, 3, 8)
        got = saim(o)
    torch.testing.assert_close(got, saim_pairs(o, saim_params_from_module(saim)), atol=1e-5, rtol=1e-5)
