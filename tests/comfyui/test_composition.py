"""DualAnoDiff composes with other packs in one MODEL chain, in either order: an attention replace patch
(IPAdapter-style, written here), the stock PerturbedAttentionGuidance node (where the copy has it) and a
stock LoRA. Each effect must be present beside DualAnoDiff's, and the order must not matter; PAG's effect
size at the shipped strengths is pinned, and its perturbed pass must be the method's (SAIM after the
identity attention)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import harness
from tiny_models import tiny_unet
from workflow_fixtures import pack_module, with_attn2_replace, write_checkpoint

SEED, STEPS, CFG = 3, 2, 2.0


@pytest.fixture(scope="module")
def ckpt(pack):
    import folder_paths

    pack_module(pack, "nodes.model_folders").register_model_folders()
    path, _ = write_checkpoint(Path(folder_paths.get_folder_paths("dualanodiff")[0]), "compose.safetensors")
    folder_paths.filename_list_cache.clear()
    return path


def _base():
    return harness.comfy_model_from_diffusers(tiny_unet(seed=0))


def _dual(pack, model):
    loader = pack_module(pack, "nodes.loader_nodes").DualAnoDiffLoader()
    return loader.load(model, "compose.safetensors", 1.0, 1.0, 1.0, 1.0)[0]


def _scaled_attn2(model, factor=1.7):
    """An IPAdapter-like attn2 replace on every transformer block, with a measurable effect."""
    from comfy.ldm.modules.attention import optimized_attention

    def replace(q, k, v, extra_options):
        return optimized_attention(q, k, v, extra_options["n_heads"]) * factor

    return with_attn2_replace(model, replace)


def _unet(model, x, t, ctx):
    """One forward of the patched UNet with the MODEL's own options (object, weight and attention patches)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    options = dict(model.model_options["transformer_options"])
    with torch.no_grad():
        return model.model.diffusion_model(x, timesteps=t, context=ctx, transformer_options=options)


def _inputs():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 4, 8, 8, generator=gen)
    ctx = torch.randn(2, 77, 32, generator=gen).repeat(2, 1, 1)  # [global, anomaly] prompts, 2 pairs
    return x, torch.full((4,), 400.0), ctx


def test_attention_replace_patch_and_dualanodiff_both_act_in_either_order(pack, ckpt):
    x, t, ctx = _inputs()
    plain = _unet(_base(), x, t, ctx)
    dual_only = _unet(_dual(pack, _base()), x, t, ctx)
    foreign_only = _unet(_scaled_attn2(_base()), x, t, ctx)
    dual_then_foreign = _unet(_scaled_attn2(_dual(pack, _base())), x, t, ctx)
    foreign_then_dual = _unet(_dual(pack, _scaled_attn2(_base())), x, t, ctx)
    torch.testing.assert_close(dual_then_foreign, foreign_then_dual, atol=1e-5, rtol=1e-5)
    foreign_effect = (foreign_only - plain).abs().max()
    dual_effect = (dual_only - plain).abs().max()
    assert foreign_effect > 1e-2 and dual_effect > 1e-2
    # each effect survives beside the other: removing either changes the result by the same order
    assert (dual_then_foreign - dual_only).abs().max() > 0.2 * foreign_effect
    assert (dual_then_foreign - foreign_only).abs().max() > 0.2 * dual_effect


def test_stock_lora_and_dualanodiff_both_act_in_either_order(pack, ckpt, tmp_path):
    import folder_paths
    import nodes as comfy_nodes

    from dualanodiff_core.formats.checkpoint import load_checkpoint
    from dualanodiff_core.formats.kohya_export import export_loras

    loras = Path(folder_paths.get_folder_paths("loras")[0])
    export_loras(load_checkpoint(ckpt), loras, "compose_stock", parts=["anomaly"], dtype=torch.float32, overwrite=True)
    folder_paths.filename_list_cache.clear()

    def stock(model):
        return comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "compose_stock_anomaly.safetensors", 0.8)[0]

    x, t, ctx = _inputs()
    dual_only = _unet(_dual(pack, _base()), x, t, ctx)
    lora_then_dual = _unet(_dual(pack, stock(_base())), x, t, ctx)
    dual_then_lora = _unet(stock(_dual(pack, _base())), x, t, ctx)
    torch.testing.assert_close(lora_then_dual, dual_then_lora, atol=1e-5, rtol=1e-5)
    assert (lora_then_dual - dual_only).abs().max() > 1e-2, "the stock LoRA must act on the DualAnoDiff model"


def _pag_node():
    return pytest.importorskip("comfy_extras.nodes_pag", reason="this ComfyUI copy (March 2024) predates the "
                               "PerturbedAttentionGuidance node")


def _pag_samples(pack):
    """run(model) -> paired KSampler latents (global rows, then anomaly rows); with_pag(model) -> the stock
    PAG node's MODEL (scale 3, its default)."""
    pag = _pag_node()
    sample = pack_module(pack, "nodes.paired_sampling").paired_ksample
    gen = torch.Generator().manual_seed(9)
    cond = [harness.conditioning(torch.randn(1, 77, 32, generator=gen)) for _ in range(3)]
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=gen)}

    def run(model):
        g, a = sample(model, SEED, STEPS, CFG, "euler", "normal", cond[0], cond[1], cond[2], latent)
        return torch.cat([g["samples"], a["samples"]])

    def with_pag(model):  # the stock node's own code (a V3 node: execute is a classmethod)
        out = pag.PerturbedAttentionGuidance.execute(model, 3.0)
        return out.result[0] if hasattr(out, "result") else out[0]

    return run, with_pag


def _dual_at(pack, model, strength_lora, strength_saim):
    loader = pack_module(pack, "nodes.loader_nodes").DualAnoDiffLoader()
    return loader.load(model, "compose.safetensors", strength_lora, strength_lora, strength_saim, 1.0)[0]


def test_perturbed_attention_guidance_and_dualanodiff_both_act_in_either_order(pack, ckpt):
    run, with_pag = _pag_samples(pack)
    dual_only = run(_dual(pack, _base()))
    pag_then_dual = run(_dual(pack, with_pag(_base())))
    dual_then_pag = run(with_pag(_dual(pack, _base())))
    torch.testing.assert_close(pag_then_dual, dual_then_pag, atol=1e-4, rtol=1e-4)
    # PAG's effect on the final latents at the shipped strengths (all 1), measured on these weights (v0.3.75):
    # max 22.15, mean 4.304 (the latents themselves: mean |x| 70.3); with SAIM 0: 22.38 / 4.351; with every
    # strength 0 (the base model): 22.01 / 4.350. On these weights SAIM's term is 0.37 times the attention
    # output it follows (mean over attentions) and PAG keeps 99% of its effect; on weights whose SAIM term is
    # 10 to 22 times the attention output it keeps 1/140 (docs/nodes.md, "PAG with SAIM").
    effect = (dual_then_pag - dual_only).abs()
    assert effect.max().item() == pytest.approx(22.15, rel=0.01)
    assert effect.mean().item() == pytest.approx(4.304, rel=0.01)
    without_saim = _dual_at(pack, _base(), 1.0, 0.0)
    effect_without_saim = (run(with_pag(without_saim)) - run(without_saim)).abs().mean().item()
    assert effect_without_saim == pytest.approx(4.351, rel=0.01)
    assert effect.mean().item() > 0.9 * effect_without_saim, "SAIM must not swamp PAG on these weights"


def test_pag_perturbed_pass_inside_dualanodiff_is_the_methods(pack, ckpt, monkeypatch):
    """PAG's perturbed pass on a DualAnoDiff MODEL is the method with identity self-attention in the middle
    block: per-branch LoRA on q/k/v/out, the middle attn1 returning its values, then SAIM on that output.
    Checked against the diffusers path (our processors, the middle attn1's attention swapped for v) at the
    shipped strengths, so PAG's patch is neither dropped nor overridden by ours, and SAIM still follows it."""
    _pag_node()
    import comfy.model_patcher

    from dualanodiff_core.runtime import diffusers_adapter as adapter

    x, t, ctx = _inputs()
    model = _dual(pack, _base())
    perturbed_model = model.clone()
    # what the stock node does for its extra pass (comfy_extras/nodes_pag.py): identity attention in attn1 of
    # ("middle", 0), set with the same ComfyUI function on the options of that pass (here the clone's)
    comfy.model_patcher.set_model_options_patch_replace(
        perturbed_model.model_options, lambda q, k, v, extra_options, mask=None: v, "attn1", "middle", 0)
    comfy_eps = _unet(model, x, t, ctx)
    comfy_perturbed = _unet(perturbed_model, x, t, ctx)

    dual = adapter.load_dual_unet(tiny_unet(seed=0), ckpt)
    middle = dual.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    real_attention = adapter._multi_head_attention
    identity = {"on": False}

    def attention(attn, q, k, v, mask):
        return v if identity["on"] and attn is middle else real_attention(attn, q, k, v, mask)

    monkeypatch.setattr(adapter, "_multi_head_attention", attention)
    with torch.no_grad():
        eps = dual(x, t, ctx).sample
        identity["on"] = True
        perturbed = dual(x, t, ctx).sample
    torch.testing.assert_close(comfy_eps, eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(comfy_perturbed, perturbed, atol=1e-5, rtol=1e-5)
    # what PAG adds per unit of scale, one forward at t = 400 (measured: max 0.0774, mean 0.0175; the
    # prediction itself: mean 0.348)
    assert (comfy_eps - comfy_perturbed).abs().max().item() == pytest.approx(0.0774, rel=0.02)
    assert (comfy_eps - comfy_perturbed).abs().mean().item() == pytest.approx(0.0175, rel=0.02)
