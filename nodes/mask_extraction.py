"""Masks from generated anomaly-part images (ComfyUI layouts around dualanodiff_core.masks.extract),
and the U-2-Net / SAM model loaders."""
from __future__ import annotations

import torch


NODE_MODEL_HINTS = {
    "u2net": "a U-2-Net model: connect 'DualAnoDiff U-2-Net Loader' (u2net.pth or u2netp.pth in models/u2net)",
    "sam": "a SAM model: connect 'DualAnoDiff SAM Loader' (a sam_vit_*.pth in models/sams)",
}
OVERLAY_COLOUR = (1.0, 0.15, 0.1)


def load_u2net_model(path: str):
    import comfy.model_management

    from ..dualanodiff_core.masks.u2net import load_u2net

    return load_u2net(path, device=comfy.model_management.get_torch_device())


def load_sam_model(path: str):
    """A segment-anything ``Sam`` on ComfyUI's device; the variant (vit_b/l/h) is read from the weights."""
    import comfy.model_management

    from ..dualanodiff_core.masks.sam_loader import load_sam

    return load_sam(path, device=comfy.model_management.get_torch_device())


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
    from ..dualanodiff_core.masks.methods import check_mask_method
    from ..dualanodiff_core.masks.extract import extract_masks

    check_mask_method(method, {k for k, v in (("u2net", u2net), ("sam", sam)) if v is not None}, NODE_MODEL_HINTS)
    bchw = images[..., :3].permute(0, 3, 1, 2)
    result = extract_masks(bchw, method, u2net=u2net, sam=unwrap_sam(sam), threshold=threshold or None,
                           grow_px=int(grow), blur_px=float(blur))
    binary = result.binary[:, 0].float().cpu()
    soft = result.soft[:, 0].float().cpu()
    return binary, soft, overlay(images.cpu(), binary)
