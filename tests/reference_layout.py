"""Writes state dicts in the reference implementation's key layout (reference-method.md section 7).

Written from the spec, independently of dualanodiff_core.formats.reference_import.
"""
from __future__ import annotations


def reference_state_dict(layers_by_path: dict, bcm: bool = False, te_lora: dict | None = None) -> dict:
    sd = {}
    for path, layer in layers_by_path.items():
        chained = bcm and path.endswith("attn1")
        base = f"unet.{path}.processor." + ("chained_proc." if chained else "")
        for t in ("q", "k", "v", "out"):
            lora = layer.lora(t)
            for b in (0, 1):
                sd[f"{base}to_{t}_lora.{b}.down.weight"] = lora.down[b].detach().clone()
                sd[f"{base}to_{t}_lora.{b}.up.weight"] = lora.up[b].detach().clone()
        s = layer.saim
        q, k, v = s.qkv.weight.detach().chunk(3)
        qb, kb, vb = s.qkv.bias.detach().chunk(3)
        for name, w, bias in (("temporal_n", s.norm.weight, s.norm.bias), ("temporal_i", s.proj_in.weight, s.proj_in.bias),
                              ("temporal_q", q, qb), ("temporal_k", k, kb), ("temporal_v", v, vb),
                              ("temporal_o", s.proj_out.weight, s.proj_out.bias)):
            sd[f"{base}{name}.weight"] = w.detach().clone()
            sd[f"{base}{name}.bias"] = bias.detach().clone()
        if bcm:
            # attn1 carries the used MLP and gamma; attn2 of the BCM variant holds unused ones
            c = layer.lora_out.up.shape[1]
            if chained:
                m = layer.bcm
                src = (m.mlp_in.weight, m.mlp_in.bias, m.mlp_out.weight, m.mlp_out.bias, m.gamma)
            else:
                import torch
                src = (torch.ones(320, c), torch.ones(320), torch.ones(c, 320), torch.ones(c), torch.ones(1))
            names = ("temporal_condition_mlp.0.weight", "temporal_condition_mlp.0.bias",
                     "temporal_condition_mlp.1.weight", "temporal_condition_mlp.1.bias", "temporal_a")
            for name, w in zip(names, src):
                sd[f"{base}{name}"] = w.detach().clone()
    for layer_name, (down, up) in (te_lora or {}).items():
        # layer_name: "text_model.encoder.layers.N.self_attn.q_proj" -> reference to_q_lora naming
        attn, proj = layer_name.rsplit(".", 1)
        t = proj.split("_")[0]
        sd[f"text_encoder.{attn}.to_{t}_lora.down.weight"] = down.clone()
        sd[f"text_encoder.{attn}.to_{t}_lora.up.weight"] = up.clone()
    return sd
