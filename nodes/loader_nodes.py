"""Loader nodes: DualAnoDiff checkpoint, two ordinary LoRAs, U-2-Net and SAM weights."""
from __future__ import annotations

from .model_folders import file_choices, resolve

CATEGORY = "DualAnoDiff"


def _strength(default: float, tooltip: str) -> tuple:
    return ("FLOAT", {"default": default, "min": -4.0, "max": 4.0, "step": 0.05, "tooltip": tooltip})


class DualAnoDiffLoader:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Puts a DualAnoDiff checkpoint on an SD 1.5 MODEL (per-branch LoRA, SAIM, BCM if trained with it) "
                   "and its text-encoder LoRA on the CLIP. Reference files (pytorch_lora_weights.*) load too.")
    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The model with both branches; sample it with the DualAnoDiff Paired KSampler.",
                       "The CLIP with the checkpoint's text-encoder LoRA; encode the global and anomaly prompts with it.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD 1.5 MODEL, e.g. from Load Checkpoint (the base the checkpoint was trained on)."}),
            "checkpoint": (file_choices("dualanodiff"), {"tooltip": "A DualAnoDiff .safetensors (or reference pytorch_lora_weights.*) in models/dualanodiff."}),
            "strength_global": _strength(1.0, "Strength of the global-branch LoRA (whole image). 0 = base model, 1 = as trained."),
            "strength_anomaly": _strength(1.0, "Strength of the anomaly-branch LoRA (anomaly part). 0 = base model, 1 = as trained."),
            "strength_saim": _strength(1.0, "Strength of SAIM, the exchange between the two images of a pair. 0 switches it off."),
            "strength_clip": _strength(1.0, "Strength of the shared text-encoder LoRA on the CLIP."),
        }, "optional": {
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint; gets the text-encoder LoRA. Leave it out to patch only the MODEL (the CLIP output is then empty)."}),
        }}

    def load(self, model, checkpoint, strength_global, strength_anomaly, strength_saim, strength_clip, clip=None):
        from .loading import load_dual_model

        patched, clip_out, _ = load_dual_model(model, clip, resolve("dualanodiff", checkpoint), strength_global,
                                               strength_anomaly, strength_saim, strength_clip)
        return (patched, clip_out)


class DualAnoDiffLoraPairLoader:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Uses two ordinary LoRA files as the global and the anomaly branch of one MODEL (no SAIM). "
                   "Any LoRA format ComfyUI reads; only attention weights can differ per branch.")
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with both branches; sample it with the DualAnoDiff Paired KSampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        loras = file_choices("loras")
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD 1.5 MODEL."}),
            "lora_global": (loras, {"tooltip": "LoRA for the global branch (whole image), from models/loras, e.g. <name>_global.safetensors from `dualanodiff export-lora`."}),
            "lora_anomaly": (loras, {"tooltip": "LoRA for the anomaly branch (anomaly part), from models/loras, e.g. <name>_anomaly.safetensors."}),
            "strength_global": _strength(1.0, "Strength of the global LoRA."),
            "strength_anomaly": _strength(1.0, "Strength of the anomaly LoRA."),
        }}

    def load(self, model, lora_global, lora_anomaly, strength_global, strength_anomaly):
        from .loading import load_lora_pair

        return (load_lora_pair(model, resolve("loras", lora_global), resolve("loras", lora_anomaly),
                               strength_global, strength_anomaly),)


class DualAnoDiffU2NetLoader:
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads U-2-Net salient-object weights (u2net.pth or u2netp.pth) from models/u2net."
    RETURN_TYPES = ("U2NET_MODEL",)
    OUTPUT_TOOLTIPS = ("U-2-Net for object masks (Background) and anomaly masks (Extract Mask).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (file_choices("u2net"), {"tooltip": "U-2-Net weights in models/u2net: u2net.pth (full) or u2netp.pth (small)."}),
        }}

    def load(self, model_name):
        from .mask_extraction import load_u2net_model

        return (load_u2net_model(resolve("u2net", model_name)),)


class DualAnoDiffSAMLoader:
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a Segment Anything checkpoint (vit_b/l/h) from models/sams for mask refinement."
    RETURN_TYPES = ("SAM_MODEL",)
    OUTPUT_TOOLTIPS = ("SAM for the 'sam' method of Extract Mask.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (file_choices("sams"), {"tooltip": "A Segment Anything checkpoint in models/sams, e.g. sam_vit_b_01ec64.pth. Needs the segment-anything package."}),
        }}

    def load(self, model_name):
        from .mask_extraction import load_sam_model

        return (load_sam_model(resolve("sams", model_name)),)
