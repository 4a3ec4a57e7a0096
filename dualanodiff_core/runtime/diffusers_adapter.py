"""DualAnoDiff on a diffusers ``UNet2DConditionModel``: attention processors and the dual UNet.

Usage::

    from dualanodiff_core import load_dual_unet
    dual = load_dual_unet(unet, "defect.safetensors", text_encoder=text_encoder)
    eps = dual(latents_2n, t, context_2n, background=noised_bg_n).sample

``latents_2n`` holds interleaved pairs ``[g0, a0, g1, a1, ...]`` (with classifier-free guidance,
``[uncond pairs | cond pairs]``); ``background`` (BCM checkpoints only) one noised background
latent per pair, in the same unscaled latent space the checkpoint was trained with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from ..model.attention_step import after_attention, key_value_input, lora_delta, multi_head_attention
from ..model.pairing import with_background_rows, without_background_rows
from ..model.layers import AttentionDims, DualAttentionLayers, build_dual_layers, layer_key
from ..model.passes import BACKGROUND_PASS, PLAIN_PASS, PassContext
from ..model.strengths import Strengths


@dataclass
class _RunState:
    """Settings shared by all processors of one model (constant during a forward)."""

    strengths: Strengths = field(default_factory=Strengths)


def attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """Every attention module that carries a processor, by its diffusers path (``...attn1``)."""
    return {
        name[: -len(".processor")]: unet.get_submodule(name[: -len(".processor")])
        for name in unet.attn_processors
    }


def is_self_attention(path: str) -> bool:
    return path.rsplit(".", 1)[-1] == "attn1"


def attention_dims(unet: nn.Module) -> list[AttentionDims]:
    """The widths of every attention module of ``unet``, in module order."""
    return [AttentionDims(path, query_dim=attn.to_q.in_features, context_dim=attn.to_k.in_features,
                          inner_dim=attn.to_q.out_features)
            for path, attn in attention_modules(unet).items()]


def build_layers(unet: nn.Module, rank: int, saim: bool = True, bcm: bool = False) -> nn.ModuleDict:
    """Fresh DualAnoDiff layers for every attention module of ``unet`` (BCM on self-attention only)."""
    return build_dual_layers(attention_dims(unet), rank, saim=saim, bcm=bcm)


class DualAnoDiffAttnProcessor:
    """diffusers attention processor: per-branch LoRA, BCM key/value fusion, SAIM."""

    def __init__(self, path: str, layers: DualAttentionLayers, state: _RunState):
        self.path = path
        self.layers = layers
        self.state = state
        self.self_attention = is_self_attention(path)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 dualanodiff: PassContext | None = None):
        if hidden_states.ndim != 3:
            raise ValueError(f"{self.path}: DualAnoDiff expects (batch, tokens, channels) attention input")
        layers, state = self.layers, self.state
        pass_ctx = dualanodiff or PLAIN_PASS
        h = hidden_states
        if encoder_hidden_states is None:
            context = h
        else:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states

        group = pass_ctx.group
        if self.self_attention:
            context = key_value_input(layers, h, context, pass_ctx)
        s = state.strengths
        q = attn.to_q(h) + lora_delta(layers, "q", h, s, group)
        k = attn.to_k(context) + lora_delta(layers, "k", context, s, group)
        v = attn.to_v(context) + lora_delta(layers, "v", context, s, group)
        a = _multi_head_attention(attn, q, k, v, attention_mask)
        out = attn.to_out[0](a) + lora_delta(layers, "out", a, s, group)
        out = after_attention(layers, attn.to_out[1](out), s, group)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _multi_head_attention(attn, q, k, v, attention_mask):
    b, heads = q.shape[0], attn.heads
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, k.shape[1], b)
        attention_mask = attention_mask.view(b, heads, -1, attention_mask.shape[-1])
    return multi_head_attention(q, k, v, heads, attention_mask)


class DualAnoDiffUNet(nn.Module):
    """A diffusers UNet with DualAnoDiff's two branches; called like the UNet itself.

    ``forward(sample, timestep, encoder_hidden_states, background=None, **kwargs)`` takes interleaved
    pairs. With ``background`` (one noised background latent per pair) and BCM layers present, each
    pair's background runs in the same UNet call as a third row with the pair's global-row context
    and the global LoRA, without SAIM (BCM's reference pass, in lockstep with the pair: see
    branch_math), and its self-attention inputs feed the global row's keys and values. The output
    holds the pair rows only.
    """

    def __init__(self, unet: nn.Module, layers: nn.ModuleDict, strengths: Strengths | None = None):
        super().__init__()
        self.unet = unet
        self.dual_layers = layers
        self._state = _RunState(strengths=strengths or Strengths())
        self._original_processors = dict(unet.attn_processors)
        processors = {}
        for path in attention_modules(unet):
            key = layer_key(path)
            if key not in layers:
                raise KeyError(f"no DualAnoDiff layers for attention module {path}")
            processors[f"{path}.processor"] = DualAnoDiffAttnProcessor(path, layers[key], self._state)
        unet.set_attn_processor(processors)

    @property
    def strengths(self) -> Strengths:
        return self._state.strengths

    @property
    def has_bcm(self) -> bool:
        return any(layer.bcm is not None for layer in self.dual_layers.values())

    def detach(self) -> nn.Module:
        """Give the UNet its original processors back and return it."""
        self.unet.set_attn_processor(self._original_processors)
        return self.unet

    def forward(self, sample, timestep, encoder_hidden_states, background=None, cross_attention_kwargs=None,
                return_dict: bool = True, **kwargs):
        if sample.shape[0] % 2:
            raise ValueError(
                f"DualAnoDiff needs interleaved (global, anomaly) pairs: got an odd batch of {sample.shape[0]}"
            )
        extra = dict(cross_attention_kwargs or {})
        if background is None:
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=return_dict,
                             cross_attention_kwargs={**extra, "dualanodiff": PLAIN_PASS}, **kwargs)
        if not self.has_bcm:
            raise ValueError("a background was given but this checkpoint has no BCM weights")
        n_pairs = sample.shape[0] // 2
        if background.shape[0] != n_pairs or background.shape[1:] != sample.shape[1:]:
            raise ValueError(
                f"background must hold one latent per pair, shape {(n_pairs, *sample.shape[1:])}, "
                f"got {tuple(background.shape)}"
            )
        if torch.is_tensor(timestep) and timestep.ndim == 1 and timestep.shape[0] == sample.shape[0]:
            timestep = with_background_rows(timestep)
        out = self.unet(with_background_rows(sample, background.to(sample.dtype)), timestep,
                        with_background_rows(encoder_hidden_states), return_dict=False,
                        cross_attention_kwargs={**extra, "dualanodiff": BACKGROUND_PASS}, **kwargs)
        pairs = without_background_rows(out[0])
        return UNet2DConditionOutput(sample=pairs) if return_dict else (pairs,)


def load_dual_unet(
    unet: nn.Module,
    checkpoint,
    text_encoder: nn.Module | None = None,
    strengths: Strengths | None = None,
    clip_strength: float = 1.0,
) -> DualAnoDiffUNet:
    """Put a DualAnoDiff checkpoint (path or :class:`DualAnoDiffCheckpoint`) on a diffusers UNet.

    The UNet keeps its weights; the text encoder, if given, gets the checkpoint's shared LoRA
    (through peft). Layers take the UNet's device and dtype.
    """
    from ..formats.checkpoint import DualAnoDiffCheckpoint, load_checkpoint
    from ..formats.text_encoder_lora import apply_text_encoder_lora

    ckpt = checkpoint if isinstance(checkpoint, DualAnoDiffCheckpoint) else load_checkpoint(Path(checkpoint))
    layers = build_layers(unet, rank=ckpt.rank, saim=ckpt.has("saim"), bcm=ckpt.has("bcm"))
    ckpt.load_into_layers(layers)
    param = next(unet.parameters())
    layers.to(device=param.device, dtype=param.dtype)
    if text_encoder is not None and ckpt.has("text_encoder_lora"):
        apply_text_encoder_lora(text_encoder, ckpt.text_encoder_lora(), strength=clip_strength)
    return DualAnoDiffUNet(unet, layers, strengths)
