"""DualAnoDiff composes with other packs in one MODEL chain, in either order: an attention replace patch
(IPAdapter-style, written here), the stock PerturbedAttentionGuidance node (where the copy has it) and a
stock LoRA. Each effect must be present beside DualAnoDiff's, and the order must not matter."""
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


def test_perturbed_attention_guidance_and_dualanodiff_both_act_in_either_order(pack, ckpt):
    pag = pytest.importorskip("comfy_extras.nodes_pag", reason="this ComfyUI copy (March 2024) predates the "
                              "PerturbedAttentionGuidance node")
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

    dual_only = run(_dual(pack, _base()))
    pag_then_dual = run(_dual(pack, with_pag(_base())))
    dual_then_pag = run(with_pag(_dual(pack, _base())))
    torch.testing.assert_close(pag_then_dual, dual_then_pag, atol=1e-4, rtol=1e-4)
    assert (dual_then_pag - dual_only).abs().max() > 1e-2, "PAG must act on the DualAnoDiff model"
