"""DualAnoDiff on a ComfyUI MODEL through ComfyUI's official patch slots, composable with other packs.

On a ``clone()`` of the model, for every attention (attn1 and attn2 of every transformer block):

1. object patches: ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` become :mod:`branch_projections`
   copies of themselves that add each row's branch LoRA to their output. They share the original
   module's parameters, so ComfyUI's weight patching (a stock LoraLoader before or after) and its
   low-VRAM casting still act on them, and the attention itself stays free: another pack's attention
   replace patch (IPAdapter, PerturbedAttentionGuidance, ...) receives q/k/v with the branch LoRA in.
2. pre-patch: checks the batch is made of pairs, tells the projections the row layout (pairs, or
   with a BCM background triples whose background row takes the global branch's LoRA), and for attn1
   with BCM makes the global rows' key/value input the background-fused one.
3. output patch: SAIM on the attention output (after ``to_out``) of the pair rows.

The row layout travels in ``transformer_options[PASS_KEY]`` (set by background.py). The math is
``dualanodiff_core.model.branch_math`` through the ``DualAttentionLayers`` modules.
"""
from __future__ import annotations

import torch

from ..dualanodiff_core.model.attention_step import after_attention, key_value_input, lora_delta
from ..dualanodiff_core.errors import DualAnoDiffError
from ..dualanodiff_core.model.branch_math import PAIR
from ..dualanodiff_core.model.passes import PLAIN_PASS
from ..dualanodiff_core.model.strengths import Strengths
from .attention_sites import attention_sites, block_key
from .branch_projections import LORA_PROJECTIONS, with_branch_lora

PASS_KEY = "dualanodiff_pass"


class DualPatchSet:
    """What all patches of one patched model share: the layers, the strengths and the current pass."""

    def __init__(self, bank, strengths: Strengths):
        self.bank = bank
        self.strengths = strengths
        self.group = PAIR  # rows per pair, set by the pre-patch of every attention call, read by its projections

    def __deepcopy__(self, memo):
        return self

    def lora_delta(self, block: tuple, attention: str, target: str, x: torch.Tensor) -> torch.Tensor | None:
        layers = self.bank.get(block, attention, x)
        if layers is None:
            return None
        return lora_delta(layers, target, x, self.strengths, self.group)


class _Patch:
    """ComfyUI deep-copies model_options on every clone(): share, never copy, the weights."""

    def __init__(self, patch_set: DualPatchSet, attention: str):
        self.patch_set = patch_set
        self.attention = attention

    def __deepcopy__(self, memo):
        return self


def _check_rows(rows: int, group: int = PAIR) -> None:
    if rows % group:
        if group != PAIR:
            raise DualAnoDiffError(f"DualAnoDiff BCM: {rows} rows are not whole (global, anomaly, background) triples")
        raise DualAnoDiffError(
            f"DualAnoDiff: the latent batch has {rows} rows, but a DualAnoDiff model needs interleaved "
            "(global, anomaly) pairs, i.e. an even batch. Use the DualAnoDiff Paired KSampler, or feed the "
            "stock samplers a latent from 'DualAnoDiff Pair Latents' and conditioning from "
            "'DualAnoDiff Pair Conditioning'."
        )


def _check_pairs(n: torch.Tensor, extra_options: dict, group: int) -> None:
    """Every chunk of the forward ([cond | uncond], any order) must be whole interleaved pairs (triples)."""
    chunks = len(extra_options.get("cond_or_uncond") or [0])
    _check_rows(n.shape[0] // chunks if n.shape[0] % chunks == 0 else n.shape[0], group)


class PrePatch(_Patch):
    def __call__(self, n, context, value, extra_options):
        state = extra_options.get(PASS_KEY) or PLAIN_PASS
        self.patch_set.group = state.group
        _check_pairs(n, extra_options, state.group)
        if self.attention != "attn1" or not state.background:
            return n, context, value
        layers = self.patch_set.bank.get(block_key(extra_options), self.attention, n)
        if layers is None:
            return n, context, value
        fused = key_value_input(layers, n, context, state)
        if fused is not context:
            context = value = fused
        return n, context, value


class OutputPatch(_Patch):
    def __call__(self, n, extra_options):
        ps = self.patch_set
        layers = ps.bank.get(block_key(extra_options), self.attention, n)
        return n if layers is None else after_attention(layers, n, ps.strengths, ps.group)


def find_patch_set(model_patcher):
    """The DualPatchSet on a MODEL, or None when it carries no DualAnoDiff patches."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches", {})
    for p in patches.get("attn1_patch", []):
        if isinstance(p, PrePatch):
            return p.patch_set
    return None


def model_object(model_patcher, name: str):
    """The module at ``name`` as this MODEL sees it (another pack's object patch included), also while
    some clone of the same model has its object patches applied."""
    if hasattr(model_patcher, "get_model_object"):
        return model_patcher.get_model_object(name)
    import comfy.utils  # the March 2024 copy: no get_model_object yet

    if name in model_patcher.object_patches:
        return model_patcher.object_patches[name]
    return model_patcher.object_patches_backup.get(name) or comfy.utils.get_attr(model_patcher.model, name)


def apply_dual_patches(model_patcher, bank, strengths: Strengths):
    """A clone of the MODEL with DualAnoDiff's patches; the input MODEL is left untouched."""
    if find_patch_set(model_patcher) is not None:
        raise DualAnoDiffError(
            "this MODEL already carries DualAnoDiff patches; load one DualAnoDiff checkpoint per model "
            "(connect the loader to the plain checkpoint's MODEL)"
        )
    patch_set = DualPatchSet(bank, strengths)
    patched = model_patcher.clone()
    patched.set_model_attn1_patch(PrePatch(patch_set, "attn1"))
    patched.set_model_attn2_patch(PrePatch(patch_set, "attn2"))
    for site in attention_sites(model_patcher):
        if site.block + (site.attention,) not in bank.layers:
            continue
        for target in LORA_PROJECTIONS:
            name = f"diffusion_model.{site.comfy_path}.{LORA_PROJECTIONS[target]}"
            patched.add_object_patch(name, with_branch_lora(model_object(model_patcher, name), patch_set,
                                                            site.block, site.attention, target))
    patched.set_model_attn1_output_patch(OutputPatch(patch_set, "attn1"))
    patched.set_model_attn2_output_patch(OutputPatch(patch_set, "attn2"))
    return patched
