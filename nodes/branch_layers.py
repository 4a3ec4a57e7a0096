"""The DualAnoDiff layers of one model, one ``DualAttentionLayers`` per attention site.

Built from a DualAnoDiff checkpoint (or a reference checkpoint, converted on the fly) or from
two ordinary LoRA files. Kept on the CPU in fp32; :meth:`LayerBank.get` hands out copies on the
device and dtype the model actually runs with, made on first use and cached.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..dualanodiff_core.model.layers import build_dual_layers, dual_layers, layer_key
from .branch_projections import LORA_PROJECTIONS as LORA_LINEARS

log = logging.getLogger("DualAnoDiff")


def _key(site) -> tuple:
    return site.block + (site.attention,)


class LayerBank:
    """``{(block name, id, index, attention): DualAttentionLayers}`` plus a per-device cache."""

    def __init__(self, layers: dict, source: str):
        self.layers = layers
        self.source = source
        self._placed: dict = {}

    @property
    def has_saim(self) -> bool:
        return any(layer.saim is not None for layer in self.layers.values())

    @property
    def has_bcm(self) -> bool:
        return any(layer.bcm is not None for layer in self.layers.values())

    @property
    def blocks(self) -> list:
        return sorted({k[:3] for k in self.layers}, key=str)

    def get(self, block: tuple, attention: str, like: torch.Tensor):
        """The layers of one site on ``like``'s device and dtype (None for a site we do not patch)."""
        placed = self._placed.get((like.device, like.dtype))
        if placed is None:
            if len(self._placed) >= 2:  # a model moves between at most two placements at a time
                self._placed.clear()
            placed = self._placed[(like.device, like.dtype)] = {}
        key = block + (attention,)
        layer = placed.get(key)
        if layer is None:
            source = self.layers.get(key)
            if source is None:
                return None
            layer = placed[key] = _copy_to(source, like.device, like.dtype)
        return layer


def _copy_to(layer, device, dtype):
    import copy

    if next(layer.parameters()).device == device and next(layer.parameters()).dtype == dtype:
        return layer
    return copy.deepcopy(layer).to(device=device, dtype=dtype).requires_grad_(False)


def read_dual_checkpoint(path: str):
    """A validated DualAnoDiff checkpoint; reference files (``pytorch_lora_weights.*``) are converted."""
    from ..dualanodiff_core.formats.checkpoint import open_checkpoint

    return open_checkpoint(Path(path))


def layers_from_checkpoint(ckpt, sites: list) -> LayerBank:
    """Layers for every site, filled from the checkpoint (keys and shapes checked by the checkpoint)."""
    modules = build_dual_layers([s.dims for s in sites], ckpt.rank, saim=ckpt.has("saim"), bcm=ckpt.has("bcm"))
    ckpt.load_into_layers(modules)
    layers = {_key(s): modules[layer_key(s.diffusers_path)].requires_grad_(False).eval() for s in sites}
    return LayerBank(layers, str(ckpt.path or "checkpoint"))


def dense_lora_deltas(model_patcher, lora_state_dict: dict, sites: list) -> tuple[dict, int]:
    """``{(site key, target): dense delta (out, in)}`` of an ordinary LoRA file in any format
    ComfyUI's loader reads, plus the number of LoRA weights outside attention (not usable per branch)."""
    import comfy.lora
    import comfy.utils

    key_map = comfy.lora.model_lora_keys_unet(model_patcher.model, {})
    loaded = comfy.lora.load_lora(lora_state_dict, key_map)
    patched = model_patcher.clone()
    patched.add_patches(loaded, 1.0)
    calculate = getattr(comfy.lora, "calculate_weight", None) or patched.calculate_weight
    wanted = {}
    for site in sites:
        for target, linear in LORA_LINEARS.items():
            wanted[f"diffusion_model.{site.comfy_path}.{linear}.weight"] = (_key(site), target)
    deltas = {}
    for weight_key, patches in patched.patches.items():
        if weight_key not in wanted or not patches:
            continue
        weight = comfy.utils.get_attr(model_patcher.model, weight_key).detach().float()
        deltas[wanted[weight_key]] = calculate(patches, weight.clone(), weight_key).float() - weight
    outside = sum(1 for k in loaded if k not in wanted)
    return deltas, outside


def _low_rank(delta: torch.Tensor, rel_tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact factorisation ``delta = up @ down`` at the delta's numerical rank (SVD)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    rank = int((s > s[0] * rel_tol).sum()) if s.numel() and s[0] > 0 else 0
    root = s[:rank].sqrt()
    return (vh[:rank] * root[:, None]).float(), (u[:, :rank] * root).float()


def layers_from_lora_pair(model_patcher, global_sd: dict, anomaly_sd: dict, sites: list, source: str) -> LayerBank:
    """Layers whose two LoRA sets come from two ordinary LoRA files (no SAIM, no BCM)."""
    per_branch = []
    for name, sd in (("global", global_sd), ("anomaly", anomaly_sd)):
        deltas, outside = dense_lora_deltas(model_patcher, sd, sites)
        if not deltas:
            raise ValueError(
                f"the {name} LoRA changes no attention layer of this model (q/k/v/out of attn1/attn2); "
                "is it an SD 1.x LoRA?"
            )
        if outside:
            log.warning("DualAnoDiff: the %s LoRA also changes %d weights outside attention; those cannot be "
                        "applied per branch and are ignored (load them with LoraLoader for both branches)",
                        name, outside)
        per_branch.append({k: _low_rank(v) for k, v in deltas.items()})

    layers = {}
    for site in sites:
        key = _key(site)
        factors = {(b, t): per_branch[b].get((key, t)) for b in (0, 1) for t in LORA_LINEARS}
        rank = max([f[0].shape[0] for f in factors.values() if f is not None] + [1])
        layer = dual_layers(site.dims, rank, saim=False, bcm=False)
        with torch.no_grad():
            for t in LORA_LINEARS:
                lora = layer.lora(t)
                lora.down.zero_()
                lora.up.zero_()
                for b in (0, 1):
                    f = factors[(b, t)]
                    if f is not None:
                        down, up = f
                        lora.down[b, : down.shape[0]] = down
                        lora.up[b, :, : up.shape[1]] = up
        layers[key] = layer.requires_grad_(False).eval()
    return LayerBank(layers, source)
