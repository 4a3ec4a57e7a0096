"""Masks from generated anomaly-part images (ComfyUI layouts around dualanodiff_core.masks),
and the U-2-Net / SAM model loaders."""
from __future__ import annotations

import torch

from ..dualanodiff_core.errors import DualAnoDiffError

METHODS = ("threshold", "u2net", "sam")
OVERLAY_COLOUR = (1.0, 0.15, 0.1)


def load_u2net_model(path: str):
    import comfy.model_management

    from ..dualanodiff_core.u2net import load_u2net

    return load_u2net(path, device=comfy.model_management.get_torch_device())


def load_sam_model(path: str):
    """A segment-anything ``Sam``; the variant (vit_b/l/h) is read from the weights."""
    import comfy.model_management
    import comfy.utils

    try:
        from segment_anything import sam_model_registry
    except ImportError as exc:
        raise DualAnoDiffError(
            "the SAM mask method needs the segment-anything package (and torchvision, which ComfyUI has): "
            "pip install segment-anything"
        ) from exc
    state = comfy.utils.load_torch_file(path, safe_load=True)
    probe = state.get("image_encoder.patch_embed.proj.weight")
    kinds = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
    if probe is None or probe.shape[0] not in kinds:
        raise DualAnoDiffError(f"{path} is not a Segment Anything checkpoint (vit_b, vit_l or vit_h)")
    sam = sam_model_registry[kinds[probe.shape[0]]]()
    sam.load_state_dict(state)
    return sam.to(comfy.model_management.get_torch_device()).eval()


def unwrap_sam(sam):
    """Accept our Sam or a wrapper from another pack that holds it in ``.model``."""
    return getattr(sam, "model", sam) if sam is not None and not hasattr(sam, "image_encoder") else sam


def overlay(images: torch.Tensor, mask: torch.Tensor, opacity: float = 0.5) -> torch.Tensor:
    """IMAGE (B, H, W, 3) with the mask tinted red, for a quick look."""
    colour = torch.tensor(OVERLAY_COLOUR, dtype=images.dtype, device=images.device)
    m = (mask.to(images)[..., None] * opacity).clamp(0, 1)
    return images[..., :3] * (1 - m) + colour * m


def extract(images: torch.Tensor, method: str, threshold: float, grow: int, blur: float, u2net=None, sam=None):
    """(binary MASK, soft MASK, overlay IMAGE) for an IMAGE batch of anomaly parts.

    ``threshold`` 0 takes the method's default (0.1 grey distance, 0.5 U-2-Net saliency).
    """
    from ..dualanodiff_core.masks import extract_masks

    if method not in METHODS:
        raise DualAnoDiffError(f"unknown mask method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "u2net" and u2net is None:
        raise DualAnoDiffError(
            "mask method 'u2net' needs a U-2-Net model: connect 'DualAnoDiff U-2-Net Loader' "
            "(u2net.pth or u2netp.pth in models/u2net)"
        )
    if method == "sam" and sam is None:
        raise DualAnoDiffError(
            "mask method 'sam' needs a SAM model: connect 'DualAnoDiff SAM Loader' (a sam_vit_*.pth in models/sams)"
        )
    bchw = images[..., :3].permute(0, 3, 1, 2)
    result = extract_masks(bchw, method, u2net=u2net, sam=unwrap_sam(sam), threshold=threshold or None,
                           grow_px=int(grow), blur_px=float(blur))
    binary = result.binary[:, 0].float().cpu()
    soft = result.soft[:, 0].float().cpu()
    return binary, soft, overlay(images.cpu(), binary)
