"""DualAnoDiff's branch math on interleaved pair batches ``[g0, a0, g1, a1, ...]``.

Pure tensor functions, shared by the diffusers attention processors and the ComfyUI patches.
Row ``2n`` is the global branch of pair ``n``, row ``2n + 1`` its anomaly branch. Nothing here
loops over pairs: pairs are a batch dimension after ``view(n_pairs, 2, ...)``.

With a BCM background the rows come in triples ``[g0, a0, r0, g1, a1, r1, ...]``: ``r_n`` is pair
``n``'s noised background, run through the same UNet call as the pair (the reference pass of
reference-method.md section 4, done in lockstep: at every self-attention its normed input is there
for the global row to fuse). Background rows take the global LoRA and no SAIM, and never read the
pair's rows, so they compute exactly what a separate reference pass would.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GLOBAL, ANOMALY = 0, 1


PAIR, TRIPLE = 2, 3  # rows per pair: (global, anomaly), or with a BCM background (global, anomaly, background)


def pair_view(x: torch.Tensor, group: int = PAIR) -> torch.Tensor:
    """``(group * N, ...)`` -> ``(N, group, ...)``; refuses a batch of broken pairs with a clear message."""
    if x.shape[0] % group:
        what = "an even batch of interleaved (global, anomaly) pairs" if group == PAIR else \
            "a batch of interleaved (global, anomaly, background) triples"
        raise ValueError(f"DualAnoDiff needs {what}, got {x.shape[0]} rows")
    return x.reshape(x.shape[0] // group, group, *x.shape[1:])


def on_pair_rows(fn, x: torch.Tensor, group: int) -> torch.Tensor:
    """``fn`` (a function of interleaved pairs) applied to the pair rows of a batch of ``group``-row
    groups; background rows pass through unchanged."""
    if group == PAIR:
        return fn(x)
    rows = pair_view(x, group)
    pairs = fn(rows[:, :PAIR].reshape(-1, *x.shape[1:]))
    return torch.cat((pair_view(pairs), rows[:, PAIR:]), dim=1).reshape(x.shape)


def branch_lora_delta(
    x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Per-branch LoRA delta ``up[b] @ down[b] @ x * scale[b]`` for each row's branch ``b``.

    x: ``(G*N, T, C_in)`` in groups of G rows; down: ``(G, r, C_in)``; up: ``(G, C_out, r)``;
    scale: ``(G,)``: row ``i`` of every group takes ``down[i]``, ``up[i]``, ``scale[i]`` (G = 2 for
    pairs; G = 3 for triples, whose background row takes the global branch's weights). Returns
    ``(G*N, T, C_out)``.
    """
    group = down.shape[0]
    # broadcasting matmul: one batched GEMM over contiguous (T, C) rows, no copy of x
    hidden = torch.matmul(pair_view(x, group), down.transpose(1, 2)) * scale.view(1, group, 1, 1)
    return torch.matmul(hidden, up.transpose(1, 2)).reshape(x.shape[0], x.shape[1], up.shape[1])


def saim(
    o: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    in_weight: torch.Tensor,
    in_bias: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    strength: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Self-attention interaction module on an attention output ``o`` of shape ``(2N, T, C)``.

    Per spatial position, the (global, anomaly) pair forms a 2-token sequence that goes through
    single-head attention of width C; the result is added back to ``o`` scaled by ``strength``.
    With two tokens, ``softmax([s0, s1])[1] == sigmoid(s1 - s0)``, so the attention is
    ``v0 + sigmoid(q . (k1 - k0) / sqrt(C)) * (v1 - v0)`` with no score matrix at all.
    """
    if strength == 0:
        return o
    c = o.shape[-1]
    x = F.linear(F.layer_norm(o, (c,), norm_weight, norm_bias, eps), in_weight, in_bias)
    q, k, v = F.linear(pair_view(x), qkv_weight, qkv_bias).chunk(3, dim=-1)  # each (N, 2, T, C)
    dk = (k[:, ANOMALY] - k[:, GLOBAL]).unsqueeze(1)
    dv = (v[:, ANOMALY] - v[:, GLOBAL]).unsqueeze(1)
    w_anomaly = torch.sigmoid((q * dk).sum(-1, keepdim=True) * (1.0 / math.sqrt(c)))
    mixed = v[:, GLOBAL].unsqueeze(1) + w_anomaly * dv
    y = F.linear(mixed, out_weight, out_bias).reshape(o.shape)
    return o + y if strength == 1 else o + strength * y


def fold_saim(in_weight, in_bias, qkv_weight, qkv_bias) -> tuple:
    """Fold SAIM's input linear into its q/k/v linears for inference:
    ``(q_weight, q_bias, kv_weight, v_weight, v_bias)`` for :func:`saim_inference`."""
    weight = qkv_weight @ in_weight
    bias = qkv_weight @ in_bias + qkv_bias
    q_w, k_w, v_w = weight.chunk(3)
    q_b, _, v_b = bias.chunk(3)
    return q_w, q_b, torch.cat([k_w, v_w]), v_w, v_b


def saim_inference(o, norm_weight, norm_bias, folded: tuple, out_weight, out_bias, strength=1.0, eps=1e-6):
    """:func:`saim` with fewer multiply-adds, for inference (same result up to rounding).

    Only ``k1 - k0``, ``v0`` and ``v1 - v0`` are needed (see :func:`saim`), and both differences are
    linear in the difference of the normed inputs, so their biases cancel: per pair that is q on two
    rows, k/v differences on one, v0 on one (3.5 C^2 per row instead of 5 C^2 with proj_in separate).
    """
    if strength == 0:
        return o
    q_w, q_b, kv_w, v_w, v_b = folded
    c = o.shape[-1]
    normed = pair_view(F.layer_norm(o, (c,), norm_weight, norm_bias, eps))
    first = normed[:, GLOBAL]
    q = F.linear(normed, q_w, q_b)
    dk, dv = F.linear(normed[:, ANOMALY] - first, kv_w).chunk(2, dim=-1)
    w_anomaly = torch.sigmoid((q * dk.unsqueeze(1)).sum(-1, keepdim=True) * (1.0 / math.sqrt(c)))
    mixed = F.linear(first, v_w, v_b).unsqueeze(1) + w_anomaly * dv.unsqueeze(1)
    y = F.linear(mixed, out_weight, out_bias).reshape(o.shape)
    return o + y if strength == 1 else o + strength * y


def bcm_fuse_kv_input(
    h: torch.Tensor,
    mlp_in_weight: torch.Tensor,
    mlp_in_bias: torch.Tensor,
    mlp_out_weight: torch.Tensor,
    mlp_out_bias: torch.Tensor,
    gamma: torch.Tensor,
) -> torch.Tensor:
    """Background compensation on triples: the global rows' self-attention key/value input becomes
    ``(1 - gamma) * h + gamma * MLP(h_ref)``, ``h_ref`` being the normed attn1 input of the triple's
    background row; anomaly and background rows keep ``h``.

    h: ``(3N, T, C)`` normed attn1 input of triples ``[g, a, r]``. The MLP has no activation (two
    linears, as trained).
    """
    rows = pair_view(h, TRIPLE)
    background = rows[:, TRIPLE - 1]
    bg = F.linear(F.linear(background, mlp_in_weight, mlp_in_bias), mlp_out_weight, mlp_out_bias)
    fused = torch.lerp(rows[:, GLOBAL], bg, gamma.to(h.dtype))
    return torch.stack((fused, rows[:, ANOMALY], background), dim=1).reshape(h.shape)
