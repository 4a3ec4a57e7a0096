"""Shared pieces for the node tests: extra harness nodes, stand-in CLIP/VAE, tiny checkpoints."""
from __future__ import annotations

import importlib

import torch

import harness
from dual_fixtures import random_layers
from dualanodiff_core.formats.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint
from tiny_models import tiny_unet

EXTRA_TYPES = ("CLIP", "VAE", "BACKGROUND", "U2NET_MODEL", "CONTROL_NET")


def register_extra_harness_nodes() -> None:
    """Source and capture nodes for the pack's own types and CLIP/VAE (through the harness API)."""
    for type_name in EXTRA_TYPES:
        title = type_name.title().replace("_", "")
        if f"Harness{title}" not in harness.HARNESS_NODES:
            harness.add_harness_node(f"Harness{title}", harness._source_node(type_name))
            harness.add_harness_node(f"HarnessCapture{title}", harness._capture_node(type_name))


def pack_module(pack, name: str):
    """A module of the loaded pack, e.g. ``pack_module(pack, "nodes.background")``."""
    return importlib.import_module(f"{pack.__name__}.{name}")


class FakeClip:
    """Enough of ComfyUI's CLIP for the loader: clone(), add_patches() and a CLIP-L key layout."""

    def __init__(self, layers: int = 12, width: int = 768):
        self.width = width
        self.layers = layers
        self.patches: dict = {}
        self.strength = None

        class Model:
            def state_dict(inner):
                return {f"clip_l.transformer.text_model.encoder.layers.{i}.self_attn.{p}.weight": None
                        for i in range(layers) for p in ("q_proj", "k_proj", "v_proj", "out_proj")}

        self.cond_stage_model = Model()

    def clone(self):
        c = FakeClip(self.layers, self.width)
        c.patches = dict(self.patches)
        return c

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        self.patches.update(patches)
        self.strength = strength_patch
        return list(patches)


class StubVAE:
    """Deterministic stand-in for ComfyUI's VAE: (B, H, W, 3) in [0, 1] -> (B, 4, H/8, W/8)."""

    def encode(self, pixels):
        x = pixels[..., :3].permute(0, 3, 1, 2) * 2 - 1
        pooled = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)


def text_encoder_lora(rank: int = 4, width: int = 768, layers: int = 12, seed: int = 5) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {f"text_encoder.text_model.encoder.layers.{i}.self_attn.{p}.{part}":
            torch.randn((rank, width) if part == "down" else (width, rank), generator=gen) * 0.01
            for i in range(layers) for p in ("q_proj", "k_proj", "v_proj", "out_proj") for part in ("down", "up")}


def write_checkpoint(folder, name: str, bcm: bool = False, seed: int = 11, rank: int = 4, with_te: bool = True):
    """A tiny DualAnoDiff checkpoint for tiny_unet(seed=0); returns (path, diffusers layers)."""
    unet = tiny_unet(seed=0)
    layers = random_layers(unet, rank=rank, saim=True, bcm=bcm, seed=seed)
    tensors = layers_to_tensors(layers)
    components = ["unet_lora", "saim"] + (["bcm"] if bcm else [])
    if with_te:
        tensors.update(text_encoder_lora())
        components.append("text_encoder_lora")
    ckpt = DualAnoDiffCheckpoint(tensors, make_metadata(rank, components))
    path = save_checkpoint(folder / name, ckpt, dtype=torch.float32)
    return path, layers


class ForeignAttentionReplace:
    """Test node standing in for IPAdapter & co: sets an attn2 replace patch on every transformer block."""

    CATEGORY = "_harness"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def patch(self, model):
        from comfy.ldm.modules.attention import optimized_attention

        def ip_adapter_like(q, k, v, extra_options):
            return optimized_attention(q, k, v, extra_options["n_heads"])

        return (with_attn2_replace(model, ip_adapter_like),)


def with_attn2_replace(model, replace):
    """A clone of the MODEL with ``replace`` as the attn2 replace patch of every transformer block."""
    patched = model.clone()
    for name, module in patched.model.diffusion_model.named_modules():
        if type(module).__name__ == "BasicTransformerBlock":
            parts = name.split(".")
            block = ("middle", 0) if parts[0] == "middle_block" else (parts[0].split("_")[0], int(parts[1]))
            patched.set_model_attn2_replace(replace, block[0], block[1], int(parts[-1]))
    return patched


def tiny_controlnet(model_patcher, seed: int = 9):
    """A ComfyUI ControlNet whose control model fits the tiny UNet (random weights)."""
    import comfy.cldm.cldm
    import comfy.controlnet

    config = dict(model_patcher.model.model_config.unet_config)
    config.update(hint_channels=3, device=torch.device("cpu"), dtype=torch.float32)
    control = comfy.cldm.cldm.ControlNet(**config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in control.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return comfy.controlnet.ControlNet(control, load_device=torch.device("cpu"), manual_cast_dtype=None)
