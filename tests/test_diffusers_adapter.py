"""The diffusers dual UNet against the spec, the pairing invariant, and strength 0."""
import pytest
import torch

from dual_fixtures import dual_unet, layers_by_path, pair_inputs
from spec_reference import spec_forward

T = torch.tensor(500)


@pytest.mark.parametrize("n_pairs", [1, 2, 3])
@pytest.mark.parametrize("bcm", [False, True])
def test_dual_unet_matches_spec(n_pairs, bcm):
    dual = dual_unet(bcm=bcm)
    x, ctx, bg = pair_inputs(n_pairs)
    background = bg if bcm else None
    with torch.no_grad():
        got = dual(x, T, ctx, background=background).sample
    expected = spec_forward(dual.unet, layers_by_path(dual), x, T, ctx, background=background)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_strengths_are_applied_per_branch():
    dual = dual_unet()
    dual.strengths.global_lora, dual.strengths.anomaly_lora, dual.strengths.saim = 0.5, 1.5, 0.3
    x, ctx, _ = pair_inputs(2)
    with torch.no_grad():
        got = dual(x, T, ctx).sample
    expected = spec_forward(dual.unet, layers_by_path(dual), x, T, ctx, scales=(0.5, 1.5), saim=0.3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bcm", [False, True])
def test_perturbing_one_pair_leaves_the_others_bit_identical(bcm):
    dual = dual_unet(bcm=bcm)
    x, ctx, bg = pair_inputs(4)
    background = bg if bcm else None
    k = 2
    x2 = x.clone()
    x2[2 * k + 1] += torch.randn_like(x2[2 * k + 1])  # anomaly input of pair k
    with torch.no_grad():
        a = dual(x, T, ctx, background=background).sample
        b = dual(x2, T, ctx, background=background).sample
    for n in range(4):
        rows = slice(2 * n, 2 * n + 2)
        if n == k:
            assert not torch.equal(a[2 * k], b[2 * k]), "SAIM must carry the change to pair k's global row"
        else:
            assert torch.equal(a[rows], b[rows]), f"pair {n} changed when only pair {k} was perturbed"


def test_background_of_one_pair_only_reaches_that_pair():
    dual = dual_unet(bcm=True)
    x, ctx, bg = pair_inputs(3)
    bg2 = bg.clone()
    bg2[1] += 1.0
    with torch.no_grad():
        a, b = dual(x, T, ctx, background=bg).sample, dual(x, T, ctx, background=bg2).sample
    assert torch.equal(a[0:2], b[0:2]) and torch.equal(a[4:6], b[4:6])
    assert not torch.equal(a[2:4], b[2:4])


def test_zero_strengths_give_the_plain_unet_exactly():
    dual = dual_unet(bcm=True)
    x, ctx, _ = pair_inputs(3)
    with torch.no_grad():
        dual.strengths.global_lora = dual.strengths.anomaly_lora = dual.strengths.saim = 0.0
        got = dual(x, T, ctx).sample
        plain = dual.detach()(x, T, ctx).sample
    assert torch.equal(got, plain)


def test_per_row_timesteps_and_cfg_layout():
    """[uncond pairs | cond pairs] in one batch equals two separate calls."""
    dual = dual_unet(bcm=True)
    x, ctx, bg = pair_inputs(2)
    neg = torch.zeros_like(ctx)
    t_rows = torch.tensor([300, 300, 700, 700])
    with torch.no_grad():
        both = dual(torch.cat([x, x]), torch.cat([t_rows, t_rows]), torch.cat([neg, ctx]),
                    background=torch.cat([torch.zeros_like(bg), bg])).sample
        cond = dual(x, t_rows, ctx, background=bg).sample
        uncond = dual(x, t_rows, neg, background=torch.zeros_like(bg)).sample
    torch.testing.assert_close(both, torch.cat([uncond, cond]), atol=1e-5, rtol=1e-5)


def test_bad_calls_are_refused_clearly():
    dual = dual_unet(bcm=False)
    x, ctx, bg = pair_inputs(2)
    with pytest.raises(ValueError, match="odd batch of 3"):
        dual(x[:3], T, ctx[:3])
    with pytest.raises(ValueError, match="no BCM weights"):
        dual(x, T, ctx, background=bg)
    bcm = dual_unet(bcm=True)
    with pytest.raises(ValueError, match="one latent per pair"):
        bcm(x, T, ctx, background=bg[:1])


def _grads(dual, checkpointing):
    dual.unet.train()
    if checkpointing:
        dual.unet.enable_gradient_checkpointing()
    else:
        dual.unet.disable_gradient_checkpointing()
    dual.dual_layers.zero_grad()
    x, ctx, bg = pair_inputs(2)
    out = dual(x, torch.tensor([100, 100, 800, 800]), ctx, background=bg).sample
    out.square().mean().backward()
    return {n: p.grad.clone() for n, p in dual.dual_layers.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients_with_bcm():
    dual = dual_unet(bcm=True)
    plain, ckpt = _grads(dual, False), _grads(dual, True)
    assert all(g.abs().sum() > 0 for n, g in plain.items() if ".bcm." in n), "BCM must receive gradients"
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
