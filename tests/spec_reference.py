"""DualAnoDiff written directly from reference-method.md, row by row and pair by pair.

Deliberately slow and independent of dualanodiff_core's code path: explicit loops over rows and
pairs, merged LoRA weights, a real softmax over the two tokens. Tests compare the product to it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def lora_rows(x, down, up, scales):
    """x (2N, T, C); row i uses branch i % 2: x @ (scale * up @ down).T"""
    rows = []
    for i in range(x.shape[0]):
        b = i % 2
        rows.append(x[i] @ (scales[b] * (up[b] @ down[b])).T)
    return torch.stack(rows)


def saim_pairs(o, p, strength=1.0):
    """p: dict with norm_w, norm_b, i_w, i_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b."""
    n2, t, c = o.shape
    x = F.layer_norm(o, (c,), p["norm_w"], p["norm_b"], 1e-6) @ p["i_w"].T + p["i_b"]
    out = o.clone()
    for n in range(n2 // 2):
        for pos in range(t):
            tokens = torch.stack([x[2 * n, pos], x[2 * n + 1, pos]])  # (2, C): global, anomaly
            q = tokens @ p["q_w"].T + p["q_b"]
            k = tokens @ p["k_w"].T + p["k_b"]
            v = tokens @ p["v_w"].T + p["v_b"]
            att = torch.softmax(q @ k.T / math.sqrt(c), dim=-1) @ v
            y = att @ p["o_w"].T + p["o_b"]
            out[2 * n, pos] += strength * y[0]
            out[2 * n + 1, pos] += strength * y[1]
    return out


def bcm_rows(h, h_ref, p):
    """Global rows: (1 - gamma) h + gamma MLP(h_ref); anomaly rows unchanged."""
    out = h.clone()
    for n in range(h.shape[0] // 2):
        mlp = (h_ref[n] @ p["mlp1_w"].T + p["mlp1_b"]) @ p["mlp2_w"].T + p["mlp2_b"]
        out[2 * n] = (1 - p["gamma"]) * h[2 * n] + p["gamma"] * mlp
    return out


def attention(q, k, v, heads):
    """Plain multi-head attention per row, explicit softmax."""
    b, tq, inner = q.shape
    d = inner // heads
    q = q.view(b, tq, heads, d).transpose(1, 2)
    k = k.view(b, -1, heads, d).transpose(1, 2)
    v = v.view(b, -1, heads, d).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, tq, inner)


def saim_params_from_module(saim):
    """Split our fused SAIM module into the spec's five linears (for comparisons only)."""
    qw, kw, vw = saim.qkv.weight.detach().chunk(3)
    qb, kb, vb = saim.qkv.bias.detach().chunk(3)
    return dict(
        norm_w=saim.norm.weight.detach(), norm_b=saim.norm.bias.detach(),
        i_w=saim.proj_in.weight.detach(), i_b=saim.proj_in.bias.detach(),
        q_w=qw, q_b=qb, k_w=kw, k_b=kb, v_w=vw, v_b=vb,
        o_w=saim.proj_out.weight.detach(), o_b=saim.proj_out.bias.detach(),
    )


class SpecProcessor:
    """A diffusers attention processor written from the spec (slow, for tests).

    mode "pairs": per-row LoRA by branch, optional BCM fusion from ``refs``, SAIM.
    mode "reference": global LoRA on all rows, records the normed input into ``refs``, no SAIM.
    """

    def __init__(self, path, layers, shared):
        self.path, self.layers, self.shared = path, layers, shared

    def _lora(self, name, x):
        lora = self.layers.lora(name)
        down, up = lora.down.detach(), lora.up.detach()
        if self.shared["mode"] == "reference":
            return x @ (self.shared["scales"][0] * (up[0] @ down[0])).T
        return lora_rows(x, down, up, self.shared["scales"])

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        h = hidden_states
        self_attn = self.path.endswith("attn1")
        ctx = h if encoder_hidden_states is None else encoder_hidden_states
        if self.shared["mode"] == "reference" and self_attn:
            self.shared["refs"][self.path] = h.clone()
        if self.shared["mode"] == "pairs" and self_attn and self.path in self.shared["refs"] and self.layers.bcm is not None:
            bcm = self.layers.bcm
            ctx = bcm_rows(h, self.shared["refs"][self.path], dict(
                mlp1_w=bcm.mlp_in.weight.detach(), mlp1_b=bcm.mlp_in.bias.detach(),
                mlp2_w=bcm.mlp_out.weight.detach(), mlp2_b=bcm.mlp_out.bias.detach(),
                gamma=bcm.gamma.detach()))
        q = attn.to_q(h) + self._lora("q", h)
        k = attn.to_k(ctx) + self._lora("k", ctx)
        v = attn.to_v(ctx) + self._lora("v", ctx)
        a = attention(q, k, v, attn.heads)
        o = attn.to_out[0](a) + self._lora("out", a)
        if self.shared["mode"] == "pairs" and self.layers.saim is not None:
            o = saim_pairs(o, saim_params_from_module(self.layers.saim), self.shared["saim"])
        return o


def spec_forward(unet, layers_by_path, x, t, ctx, scales=(1.0, 1.0), saim=1.0, background=None):
    """The whole dual UNet from the spec: optional BCM reference pass, then the pair pass."""
    shared = {"mode": "pairs", "refs": {}, "scales": scales, "saim": saim}
    original = dict(unet.attn_processors)
    unet.set_attn_processor({f"{p}.processor": SpecProcessor(p, l, shared) for p, l in layers_by_path.items()})
    try:
        with torch.no_grad():
            if background is not None:
                shared["mode"] = "reference"
                unet(background, t, ctx[0::2])
                shared["mode"] = "pairs"
            return unet(x, t, ctx).sample
    finally:
        unet.set_attn_processor(original)
