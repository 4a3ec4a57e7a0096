"""DualAnoDiff on a ComfyUI MODEL through ComfyUI's official attention patch slots.

For every attention (attn1 and attn2 of every transformer block) of a ``clone()`` of the model:

1. pre-patch: keeps the normed input and the key/value inputs in ``extra_options`` (the same dict
   reaches the replace and output patches of that block call). attn1 with BCM: the global rows'
   key/value input becomes the background-fused one. In a BCM reference pass it records the
   normed input instead.
2. replace patch (keyed by block): adds each row's branch LoRA to the projected q/k/v, runs
   ComfyUI's attention and keeps the pre-``to_out`` result.
3. output patch: adds the branch LoRA of ``to_out`` on that kept result, then SAIM.

The pass mode (main or BCM reference) and the background tokens travel in
``transformer_options[PASS_KEY]`` (see background.py). The math is ``dualanodiff_core.branch_math``
through the ``DualAttentionLayers`` modules.
"""
from __future__ import annotations

import torch

from ..dualanodiff_core.branch_math import GLOBAL
from ..dualanodiff_core.errors import DualAnoDiffError
from ..dualanodiff_core.strengths import Strengths
from .attention_sites import block_key

PASS_KEY = "dualanodiff_pass"
_INPUTS = "dualanodiff_{}_inputs"
_ATTENDED = "dualanodiff_{}_attended"


class DualPatchSet:
    """What all patches of one patched model share: the layers and the strengths."""

    def __init__(self, bank, strengths: Strengths):
        self.bank = bank
        self.strengths = strengths

    def __deepcopy__(self, memo):
        return self

    def lora_delta(self, layers, target: str, x: torch.Tensor, reference: bool) -> torch.Tensor:
        lora = layers.lora(target)
        if reference:  # BCM reference pass: the global branch's LoRA on every row
            return lora.branch_delta(x, GLOBAL, self.strengths.global_lora)
        return lora.delta(x, self.strengths.lora_scale(x))


class _Patch:
    """ComfyUI deep-copies model_options on every clone(): share, never copy, the weights."""

    def __init__(self, patch_set: DualPatchSet, attention: str):
        self.patch_set = patch_set
        self.attention = attention

    def __deepcopy__(self, memo):
        return self


def _check_pairs(n: torch.Tensor, extra_options: dict) -> None:
    """Every chunk of the forward ([cond | uncond], any order) must be whole interleaved pairs."""
    chunks = len(extra_options.get("cond_or_uncond") or [0])
    rows = n.shape[0] // chunks if n.shape[0] % chunks == 0 else n.shape[0]
    if rows % 2:
        raise DualAnoDiffError(
            f"DualAnoDiff: the latent batch has {rows} rows, but a DualAnoDiff model needs interleaved "
            "(global, anomaly) pairs, i.e. an even batch. Use the DualAnoDiff Paired KSampler, or feed the "
            "stock samplers a latent from 'DualAnoDiff Pair Latents' and conditioning from "
            "'DualAnoDiff Pair Conditioning'."
        )


class PrePatch(_Patch):
    def __call__(self, n, context, value, extra_options):
        state = extra_options.get(PASS_KEY)
        if state is None or not state.reference:  # the BCM reference pass has one row per pair
            _check_pairs(n, extra_options)
        block = block_key(extra_options)
        layers = self.patch_set.bank.get(block, self.attention, n)
        if layers is None:
            return n, context, value
        if self.attention == "attn1" and state is not None:
            if state.reference:
                state.background_tokens[block] = n
            elif layers.bcm is not None and state.background_tokens:
                h_ref = state.background_tokens.get(block)
                if h_ref is None:
                    raise DualAnoDiffError(f"DualAnoDiff BCM: the reference pass recorded nothing for block {block}")
                context = value = layers.bcm(n, h_ref.to(n.dtype))
        extra_options[_INPUTS.format(self.attention)] = (n, context, value)
        return n, context, value


class ReplacePatch(_Patch):
    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        inputs = extra_options.get(_INPUTS.format(self.attention))
        block = block_key(extra_options)
        layers = self.patch_set.bank.get(block, self.attention, q)
        if inputs is None or layers is None:
            raise DualAnoDiffError(
                f"DualAnoDiff: the {self.attention} pre-patch did not run for block {block}; another node removed "
                "or reordered DualAnoDiff's patches"
            )
        n, context, value = inputs
        state = extra_options.get(PASS_KEY)
        reference = bool(state is not None and state.reference)
        ps = self.patch_set
        q = q + ps.lora_delta(layers, "q", n, reference)
        k = k + ps.lora_delta(layers, "k", context, reference)
        v = v + ps.lora_delta(layers, "v", value, reference)
        attended = optimized_attention(q, k, v, extra_options["n_heads"])
        extra_options[_ATTENDED.format(self.attention)] = attended
        return attended


class OutputPatch(_Patch):
    def __call__(self, n, extra_options):
        block = block_key(extra_options)
        layers = self.patch_set.bank.get(block, self.attention, n)
        if layers is None:
            return n
        attended = extra_options.pop(_ATTENDED.format(self.attention), None)
        if attended is None:
            raise DualAnoDiffError(
                f"DualAnoDiff: the {self.attention} attention of block {block} was replaced by another node's "
                "attention patch (set after the DualAnoDiff loader, e.g. IPAdapter or an attention-couple node). "
                "DualAnoDiff computes that attention itself and cannot be combined with it: remove that node "
                "or apply it to a model without DualAnoDiff."
            )
        state = extra_options.get(PASS_KEY)
        reference = bool(state is not None and state.reference)
        ps = self.patch_set
        n = n + ps.lora_delta(layers, "out", attended, reference)
        if not reference and layers.saim is not None and ps.strengths.saim != 0:
            n = layers.saim(n, ps.strengths.saim)
        return n


def find_patch_set(model_patcher):
    """The DualPatchSet on a MODEL, or None when it carries no DualAnoDiff patches."""
    patches = model_patcher.model_options.get("transformer_options", {}).get("patches", {})
    for p in patches.get("attn1_patch", []):
        if isinstance(p, PrePatch):
            return p.patch_set
    return None


def foreign_replacements(model_patcher, blocks) -> list:
    """``["attn2 of ('input', 1, 0) by IPAdapterPatch", ...]`` for replace patches another node set."""
    replaces = model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {})
    found = []
    for attention in ("attn1", "attn2"):
        table = replaces.get(attention, {})
        for block in blocks:
            for key in (block, block[:2]):
                patch = table.get(key)
                if patch is not None and not isinstance(patch, ReplacePatch):
                    found.append(f"{attention} of {key} by {getattr(patch, '__qualname__', type(patch).__name__)}")
    return found


def apply_dual_patches(model_patcher, bank, strengths: Strengths):
    """A clone of the MODEL with DualAnoDiff's patches; the input MODEL is left untouched."""
    if find_patch_set(model_patcher) is not None:
        raise DualAnoDiffError(
            "this MODEL already carries DualAnoDiff patches; load one DualAnoDiff checkpoint per model "
            "(connect the loader to the plain checkpoint's MODEL)"
        )
    conflicts = foreign_replacements(model_patcher, bank.blocks)
    if conflicts:
        more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
        raise DualAnoDiffError(
            "another node has already replaced attention on blocks DualAnoDiff needs ("
            + "; ".join(conflicts[:3]) + more + "). DualAnoDiff computes these attentions itself and would "
            "silently switch that node off, so it refuses: remove that node from this model's chain "
            "(e.g. IPAdapter, attention couple) or use it on a model without DualAnoDiff."
        )
    patch_set = DualPatchSet(bank, strengths)
    patched = model_patcher.clone()
    patched.set_model_attn1_patch(PrePatch(patch_set, "attn1"))
    patched.set_model_attn2_patch(PrePatch(patch_set, "attn2"))
    for block in bank.blocks:
        patched.set_model_attn1_replace(ReplacePatch(patch_set, "attn1"), block[0], block[1], block[2])
        patched.set_model_attn2_replace(ReplacePatch(patch_set, "attn2"), block[0], block[1], block[2])
    patched.set_model_attn1_output_patch(OutputPatch(patch_set, "attn1"))
    patched.set_model_attn2_output_patch(OutputPatch(patch_set, "attn2"))
    return patched
