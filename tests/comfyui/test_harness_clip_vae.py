"""The harness turns the tiny transformers text encoder and diffusers VAE the CLI trains with into real
ComfyUI CLIP and VAE objects that compute the same numbers (what a Train node's equality with
`dualanodiff train` rests on)."""
from __future__ import annotations

import pytest
import torch

import harness
from dualanodiff_core.formats.base_model import load_tokenizer
from tiny_models import tiny_text_encoder, tiny_vae, write_tiny_tokenizer

PROMPTS = ["a photo of a hazelnut", "A Crack, on the metal-nut!", ""]


@pytest.fixture(scope="module")
def clip_pair(comfy_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    write_tiny_tokenizer(folder)
    te = tiny_text_encoder()
    return harness.comfy_clip_from_transformers(te, folder), te, load_tokenizer(folder)


@pytest.fixture(scope="module")
def vae_pair(comfy_root):
    vae = tiny_vae()
    return harness.comfy_vae_from_diffusers(vae), vae


@pytest.mark.parametrize("prompt", PROMPTS)
def test_clip_tokens_and_cond_equal_the_cli_text_encoder(clip_pair, prompt):
    clip, te, tokenizer = clip_pair
    ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    tokens = clip.tokenize(prompt)
    (chunks,) = tokens.values()
    assert [[t for t, _w in chunk] for chunk in chunks] == [ids]

    with torch.no_grad():
        cond = clip.encode_from_tokens(tokens)
        ref = te(torch.tensor([ids]))[0]
    assert cond.shape == ref.shape == (1, 77, 32) and cond.dtype == torch.float32
    assert (cond - ref).abs().max().item() < 1e-5


def test_vae_posterior_moments_equal_diffusers(vae_pair):
    comfy_vae, vae = vae_pair
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fsm = comfy_vae.first_stage_model
    with torch.no_grad():
        moments = fsm.quant_conv(fsm.encoder(x))
        ref = vae.encode(x).latent_dist.parameters
    assert moments.shape == ref.shape == (2, 8, 4, 4)
    assert (moments - ref).abs().max().item() < 1e-5


def test_vae_public_decode_equals_diffusers(vae_pair):
    comfy_vae, vae = vae_pair
    latent = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        image = comfy_vae.decode(latent)
        ref = ((vae.decode(latent).sample + 1) / 2).clamp(0, 1).movedim(1, -1)
    assert image.shape == ref.shape == (2, 32, 32, 3)
    assert (image - ref).abs().max().item() < 1e-4


def test_vae_public_encode_is_the_posterior_mean_or_a_draw(vae_pair):
    """Which one depends on the ComfyUI copy; a training node must not rely on either."""
    comfy_vae, vae = vae_pair
    pixels = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.manual_seed(3)
        z = comfy_vae.encode(pixels)
        dist = vae.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist
    torch.manual_seed(3)
    draw = dist.mean + dist.std * torch.randn(dist.mean.shape)
    assert (draw - dist.mean).abs().max().item() > 1e-2  # the two are told apart
    to_mean, to_draw = (z - dist.mean).abs().max().item(), (z - draw).abs().max().item()
    assert min(to_mean, to_draw) < 1e-5, (to_mean, to_draw)
    print(f"ComfyUI's VAE.encode returns the posterior {'mean' if to_mean < 1e-5 else 'sample'}")
