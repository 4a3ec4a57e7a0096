"""Load a segment-anything checkpoint (ViT-B/L/H) safely, detecting the variant from its weights."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DualAnoDiffError

VARIANTS = {12: "vit_b", 24: "vit_l", 32: "vit_h"}  # image-encoder depth -> registry name


def sam_variant(state: dict) -> str:
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    if depth not in VARIANTS:
        raise DualAnoDiffError(f"not a segment-anything checkpoint (image encoder depth {depth}); use "
                               "sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth")
    return VARIANTS[depth]


def load_sam(path: Path, device=None):
    """A ``segment_anything`` ``Sam`` with the file's weights (segment-anything needs torchvision)."""
    path = Path(path)
    if not path.is_file():
        raise DualAnoDiffError(f"SAM checkpoint not found: {path} (put sam_vit_b_01ec64.pth in ComfyUI/models/sams)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DualAnoDiffError(f"cannot read {path} ({str(exc).splitlines()[0]}); it may be truncated") from None
    from .extract import _import_sam  # clear message when segment-anything or torchvision is missing

    _import_sam()
    from segment_anything import sam_model_registry

    model = sam_model_registry[sam_variant(state)]()
    model.load_state_dict(state)
    return model.eval().to(device or "cpu")
