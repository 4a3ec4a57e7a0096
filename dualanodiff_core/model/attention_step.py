"""One DualAnoDiff attention step, independent of the host that runs the attention.

On interleaved pairs ``h = [g0, a0, g1, a1, ...]`` (or BCM triples ``[g0, a0, r0, ...]``, see
branch_math) an attention site with DualAnoDiff layers computes

    context = key_value_input(...)               BCM: the global rows' self-attention sees the background
    q = W_q h       + lora_delta("q", h)         each row its branch's LoRA (background rows the global one)
    k = W_k context + lora_delta("k", context)
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

from .branch_math import PAIR, on_pair_rows
from .passes import PassContext
from .strengths import Strengths


def lora_delta(layers, target: str, x: torch.Tensor, strengths: Strengths, group: int = PAIR) -> torch.Tensor:
    """The branch LoRA term of projection ``target`` ("q", "k", "v" or "out") for every row of ``x``."""
    return layers.lora(target).delta(x, strengths.lora_scale(x, group))


def key_value_input(layers, h: torch.Tensor, context: torch.Tensor, pass_ctx: PassContext) -> torch.Tensor:
    """The key/value input of a self-attention: with a background (triples) and BCM layers, the
    background rows' ``h`` fused into the global rows; everything else keeps ``context``."""
    if not pass_ctx.background or layers.bcm is None:
        return context
    return layers.bcm(h)


def after_attention(layers, out: torch.Tensor, strengths: Strengths, group: int = PAIR) -> torch.Tensor:
    """SAIM on the attention output (after ``to_out``) of the pair rows; background rows keep theirs."""
    if layers.saim is None or strengths.saim == 0:
        return out
    return on_pair_rows(lambda pairs: layers.saim(pairs, strengths.saim), out, group)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch's scaled dot-product attention over ``heads`` heads of (batch, tokens, heads * head width)
    inputs: what ``dualanodiff train`` runs, and what the ComfyUI Train node runs in its place of ComfyUI's
    attention (on a CPU ComfyUI's default is chunked, made for memory-bound inference and slower to
    train through). ``mask``: (batch, heads, queries, keys) or broadcastable, as the SDPA takes it."""
    b = q.shape[0]
    head_dim = q.shape[-1] // heads
    q, k, v = (t.view(b, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return a.transpose(1, 2).reshape(b, -1, heads * head_dim).to(q.dtype)
