"""A single-file SD-1 checkpoint in the layout ComfyUI and A1111 use (written here with ComfyUI's own
key maps) loads offline through dualanodiff_core.formats.base_model with identical weights."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

import harness
from dualanodiff_core.formats.base_model import load_base_model
from tiny_models import save_tiny_pipeline, tiny_text_encoder, tiny_unet, tiny_vae


def _single_file_state(unet, vae, te) -> dict:
    import comfy.utils
    from comfy.diffusers_convert import convert_vae_state_dict

    unet_map = comfy.utils.unet_to_diffusers(harness._diffusers_to_comfy_unet_config(unet.config))
    state = {f"model.diffusion_model.{unet_map[k]}": v for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in convert_vae_state_dict(vae.state_dict()).items()})
    for k, v in te.state_dict().items():
        k = k if k.startswith("text_model.") else f"text_model.{k}"
        state[f"cond_stage_model.transformer.{k}"] = v
    return {k: v.contiguous() for k, v in state.items()}


def test_single_file_checkpoint_loads_with_the_same_weights(tmp_path):
    configs = tmp_path / "configs"
    save_tiny_pipeline(configs)
    unet, vae, te = tiny_unet(), tiny_vae(), tiny_text_encoder()
    path = tmp_path / "tiny_sd15.safetensors"
    save_file(_single_file_state(unet, vae, te), str(path))

    base = load_base_model(path, tokenizer=configs / "tokenizer", config_dir=configs)
    x, c, ids = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32), torch.randint(0, 500, (2, 77))
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(base.unet(x, 5, c).sample, unet(x, 5, c).sample)
        torch.testing.assert_close(base.vae.encode(img).latent_dist.mean, vae.encode(img).latent_dist.mean)
        torch.testing.assert_close(base.text_encoder(ids)[0], te(ids)[0])
