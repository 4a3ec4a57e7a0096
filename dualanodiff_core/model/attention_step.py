"""One DualAnoDiff attention step, independent of the host that runs the attention.

On interleaved pairs ``h = [g0, a0, g1, a1, ...]`` an attention site with DualAnoDiff layers computes

    context = key_value_input(...)               BCM: the global rows' self-attention sees the background
    q = W_q h       + lora_delta("q", h)         each row its branch's LoRA (all rows the global one
    k = W_k context + lora_delta("k", context)   in BCM's reference pass)
    v = W_v context + lora_delta("v", context)
    a = attention(q, k, v)                       the host's own attention
    out = W_out a   + lora_delta("out", a)
    out = after_attention(out)                   SAIM: each global token with its anomaly token

The hosts only translate their calling conventions: the diffusers processor calls the three functions
in one place (``diffusers_adapter.py``); ComfyUI calls them from its attention pre-patch, from the
object-patched projections and from its attention output patch (``nodes/comfy_patches.py``), which
leaves the attention itself to ComfyUI or to another pack's replace patch.
"""
from __future__ import annotations

import torch

from .branch_math import GLOBAL
from ..errors import DualAnoDiffError
from .passes import PassContext
from .strengths import Strengths


def lora_delta(layers, target: str, x: torch.Tensor, strengths: Strengths, reference: bool) -> torch.Tensor:
    """The branch LoRA term of projection ``target`` ("q", "k", "v" or "out") for every row of ``x``."""
    lora = layers.lora(target)
    if reference:  # BCM's reference pass: one background row per pair, drawn by the global branch
        return lora.branch_delta(x, GLOBAL, strengths.global_lora)
    return lora.delta(x, strengths.lora_scale(x))


def key_value_input(layers, h: torch.Tensor, context: torch.Tensor, pass_ctx: PassContext, site) -> torch.Tensor:
    """The key/value input of a self-attention: in BCM's reference pass ``h`` is recorded under
    ``site`` for the main pass; in the main pass of a model with BCM layers the recorded background
    is fused into the global rows. Everything else keeps ``context``."""
    if pass_ctx.reference:
        pass_ctx.background_tokens[site] = h
        return context
    if layers.bcm is None or not pass_ctx.background_tokens:
        return context
    background = pass_ctx.background_tokens.get(site)
    if background is None:
        raise DualAnoDiffError(f"DualAnoDiff BCM: the reference pass recorded nothing for attention {site}")
    return layers.bcm(h, background.to(h.dtype))


def after_attention(layers, out: torch.Tensor, strengths: Strengths, reference: bool) -> torch.Tensor:
    """SAIM on the attention output (after ``to_out``); not in BCM's reference pass."""
    if reference or layers.saim is None or strengths.saim == 0:
        return out
    return layers.saim(out, strengths.saim)
