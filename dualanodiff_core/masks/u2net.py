"""U-2-Net salient-object detection: our own modules, loader for the official weights, saliency maps.

The module and parameter names follow the official PyTorch definition (xuebinqin/U-2-Net,
``model/u2net.py``) so that the published ``u2net.pth`` (full, 44,009,869 parameters) and
``u2netp.pth`` (small, 1,131,181 parameters) load unchanged with ``strict=True``.
Used for BCM backgrounds (reference section 4) and as one of the mask extractors (section 6).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DualAnoDiffError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 320
DEFAULT_FLOOR = 0.2
DOWNLOAD_HINT = ("get the PyTorch weights u2net.pth (full, ~170 MB) or u2netp.pth (small, ~4.7 MB) "
                 "linked from the U-2-Net project page (github.com/xuebinqin/U-2-Net)")

# (height, fully-dilated "F" variant, in, mid, out) per stage; sides take these channel counts.
_FULL = {
    "encoder": [(7, False, 3, 32, 64), (6, False, 64, 32, 128), (5, False, 128, 64, 256),
                (4, False, 256, 128, 512), (4, True, 512, 256, 512), (4, True, 512, 256, 512)],
    "decoder": [(4, True, 1024, 256, 512), (4, False, 1024, 128, 256), (5, False, 512, 64, 128),
                (6, False, 256, 32, 64), (7, False, 128, 16, 64)],
    "sides": [64, 64, 128, 256, 512, 512],
}
_SMALL = {
    "encoder": [(7, False, 3, 16, 64), (6, False, 64, 16, 64), (5, False, 64, 16, 64),
                (4, False, 64, 16, 64), (4, True, 64, 16, 64), (4, True, 64, 16, 64)],
    "decoder": [(4, True, 128, 16, 64), (4, False, 128, 16, 64), (5, False, 128, 16, 64),
                (6, False, 128, 16, 64), (7, False, 128, 16, 64)],
    "sides": [64] * 6,
}


def _upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 (dilated) conv -> batch norm -> ReLU, with the official attribute names."""

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        return F.relu(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block RSU-L (``dilated=False``: pooled levels) or RSU-4F (all levels dilated).

    Children: ``rebnconvin``, ``rebnconv1..L`` (encoder, the last one dilated), ``rebnconv{L-1}d..1d``.
    """

    def __init__(self, height: int, dilated: bool, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.height, self.dilated = height, dilated
        # RSU-L: dilation 1 on every level but the bottom (2). RSU-4F: 1, 2, 4, 8 down, mirrored up.
        dil = [2 ** i for i in range(height)] if dilated else [1] * (height - 1) + [2]
        self.rebnconvin = REBNCONV(in_ch, out_ch, 1)
        for i in range(1, height + 1):
            self.add_module(f"rebnconv{i}", REBNCONV(out_ch if i == 1 else mid_ch, mid_ch, dil[i - 1]))
        for i in range(height - 1, 0, -1):
            self.add_module(f"rebnconv{i}d", REBNCONV(2 * mid_ch, out_ch if i == 1 else mid_ch, dil[i - 1]))

    def forward(self, x):
        hxin = self.rebnconvin(x)
        h, skips = hxin, []
        for i in range(1, self.height):
            h = getattr(self, f"rebnconv{i}")(h)
            skips.append(h)
            if not self.dilated and i < self.height - 1:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
        h = getattr(self, f"rebnconv{self.height}")(h)
        for i in range(self.height - 1, 0, -1):
            skip = skips[i - 1]
            h = getattr(self, f"rebnconv{i}d")(torch.cat((_upsample_like(h, skip), skip), 1))
        return h + hxin


class _U2NetBase(nn.Module):
    def __init__(self, config: dict, in_ch: int = 3, out_ch: int = 1):
        super().__init__()
        for i, (height, dilated, cin, mid, cout) in enumerate(config["encoder"], start=1):
            self.add_module(f"stage{i}", RSU(height, dilated, in_ch if i == 1 else cin, mid, cout))
        for i, (height, dilated, cin, mid, cout) in zip(range(5, 0, -1), config["decoder"]):
            self.add_module(f"stage{i}d", RSU(height, dilated, cin, mid, cout))
        for i, ch in enumerate(config["sides"], start=1):
            self.add_module(f"side{i}", nn.Conv2d(ch, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x):
        """Returns the official 7-tuple of probabilities ``(d0 fused, d1..d6 sides)``, each (B,1,H,W)."""
        enc, h = [], x
        for i in range(1, 7):
            h = getattr(self, f"stage{i}")(h)
            enc.append(h)
            if i < 6:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
        dec = {6: enc[5]}
        for i in range(5, 0, -1):
            skip = enc[i - 1]
            h = getattr(self, f"stage{i}d")(torch.cat((_upsample_like(h, skip), skip), 1))
            dec[i] = h
        sides = [_upsample_like(getattr(self, f"side{i}")(dec[i]), x) for i in range(1, 7)]
        d0 = self.outconv(torch.cat(sides, 1))
        return tuple(torch.sigmoid(d) for d in (d0, *sides))


class U2NET(_U2NetBase):
    """Full U-2-Net (``u2net.pth``, 44.0M parameters)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1):
        super().__init__(_FULL, in_ch, out_ch)


class U2NETP(_U2NetBase):
    """Small U-2-Net (``u2netp.pth``, 1.13M parameters)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1):
        super().__init__(_SMALL, in_ch, out_ch)


# --- loading --------------------------------------------------------------------------------------

_PROBE_KEY = "stage1.rebnconv1.conv_s1.weight"  # (mid, 64, 3, 3): mid 32 = full, 16 = small


def _describe(sd: dict) -> str:
    keys = list(sd)
    head = ", ".join(repr(k) for k in keys[:3])
    if any(k.startswith("image_encoder.") for k in keys):
        kind = "it looks like a Segment Anything (SAM) checkpoint"
    elif any(k.startswith(("model.diffusion_model.", "down_blocks.", "first_stage_model.")) for k in keys):
        kind = "it looks like a Stable Diffusion / UNet checkpoint"
    elif any("lora" in k.lower() for k in keys):
        kind = "it looks like a LoRA file"
    else:
        kind = "its keys do not match U-2-Net's"
    return f"{kind} ({len(keys)} keys, e.g. {head or 'none'})"


def _read_state_dict(path: Path) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for bad headers / short files
            raise DualAnoDiffError(
                f"{path} could not be read as safetensors (truncated or corrupt download?): {e}") from e
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DualAnoDiffError(
            f"{path} holds pickled Python objects, not a plain state dict (maybe a whole model saved with "
            f"torch.save(model)); only weights are loaded, for safety. {DOWNLOAD_HINT}") from e
    except Exception as e:  # zip central directory missing, EOFError, ...
        raise DualAnoDiffError(
            f"{path} could not be read as a PyTorch checkpoint (truncated or corrupt download?): {e}. "
            f"{DOWNLOAD_HINT}") from e
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model", "net"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DualAnoDiffError(f"{path} is not a U-2-Net state dict: it holds a {type(obj).__name__} "
                               f"that is not a mapping of names to tensors. {DOWNLOAD_HINT}")
    return obj


def load_u2net(path, device=None, dtype=None) -> nn.Module:
    """Load official U-2-Net weights (``.pth`` or ``.safetensors``) into :class:`U2NET` or :class:`U2NETP`.

    The variant is detected from the weights. ``module.`` prefixes (DataParallel) and a
    ``{"state_dict": ...}`` wrapper are accepted; ``.pth`` is read with ``weights_only=True``.
    Returns the model in eval mode on ``device`` (default CPU) with ``dtype`` (default float32).
    Raises :class:`DualAnoDiffError` naming the file for a missing, truncated, ONNX or non-U-2-Net file.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        raise DualAnoDiffError(f"{path}: ONNX U-2-Net files (e.g. rembg's) are not supported; {DOWNLOAD_HINT}")
    if not path.is_file():
        raise DualAnoDiffError(f"U-2-Net weights not found: {path}; {DOWNLOAD_HINT}")
    sd = _read_state_dict(path)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    else:
        sd = dict(sd)  # drops pickled metadata: BatchNorm then accepts files without num_batches_tracked
    probe = sd.get(_PROBE_KEY)
    if probe is None or probe.ndim != 4:
        raise DualAnoDiffError(f"{path} is not a U-2-Net state dict: {_describe(sd)}. {DOWNLOAD_HINT}")
    variants = {32: U2NET, 16: U2NETP}
    cls = variants.get(probe.shape[0])
    if cls is None:
        raise DualAnoDiffError(f"{path}: unknown U-2-Net variant ({_PROBE_KEY} has shape {tuple(probe.shape)}; "
                               f"expected 32 channels for u2net.pth or 16 for u2netp.pth)")
    model = cls()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise DualAnoDiffError(f"{path} does not match the official {cls.__name__} layout "
                               f"(a different U-2-Net variant?): {str(e)[:600]}") from e
    return model.to(device=device or "cpu", dtype=dtype or torch.float32).eval()


# --- inference ------------------------------------------------------------------------------------

def _param_device_dtype(model, fallback: torch.Tensor):
    p = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    return (p.device, p.dtype) if p is not None else (fallback.device, fallback.dtype)


def _check_bchw(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DualAnoDiffError(f"expected images as a (B,3,H,W) tensor in [0,1], got {shape}")
    return images


def saliency(model, images: torch.Tensor, floor: float = DEFAULT_FLOOR, size: int = INPUT_SIZE) -> torch.Tensor:
    """U-2-Net saliency maps, as the official inference computes them.

    ``images``: (B,3,H,W) float in [0,1] (ComfyUI's (B,H,W,3) must be permuted first). Each image is
    resized to ``size`` x ``size``, divided by its maximum (the official ``ToTensorLab``), ImageNet
    normalised; the fused output d0 (already a sigmoid probability in the official forward; a model may
    return the tuple or d0 alone) is min-max normalised per image and resized back. Returns (B,1,H,W)
    float32 in [0,1] on the images' device.

    ``floor`` guards the min-max stretch: where an image's raw maximum is below it (or the map is flat)
    the network found nothing salient and stretching would turn noise into a full-range mask, so that
    image gets all zeros. A trained U-2-Net gives values near 1 on objects; 0.2 keeps weak but real
    detections and rejects near-empty maps.
    """
    images = _check_bchw(images)
    _, _, h, w = images.shape
    device, dtype = _param_device_dtype(model, images)
    x = images.to(device=device, dtype=torch.float32)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=size < max(h, w))
    x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    x = ((x - mean) / std).to(dtype)
    with torch.no_grad():
        out = model(x)
    d0 = (out[0] if isinstance(out, (tuple, list)) else out)[:, :1].float()
    hi = d0.amax(dim=(1, 2, 3), keepdim=True)
    lo = d0.amin(dim=(1, 2, 3), keepdim=True)
    valid = (hi >= floor) & (hi - lo > 1e-6)
    sal = torch.where(valid, (d0 - lo) / (hi - lo).clamp_min(1e-6), torch.zeros_like(d0))
    sal = F.interpolate(sal, size=(h, w), mode="bilinear", align_corners=False, antialias=max(h, w) < size)
    return sal.clamp_(0, 1).to(images.device)


def background_from_saliency(images: torch.Tensor, saliency_map: torch.Tensor) -> torch.Tensor:
    """BCM background: the salient object blacked out with a soft edge, the background kept.

    ``images`` (B,3,H,W) in [0,1]; ``saliency_map`` (B,1,h,w) in [0,1] (resized to H,W if needed).
    Returns ``images * (1 - saliency)``.
    """
    images = _check_bchw(images)
    s = saliency_map.to(device=images.device, dtype=images.dtype)
    if s.ndim == 3:
        s = s.unsqueeze(1)
    if s.shape[-2:] != images.shape[-2:]:
        s = F.interpolate(s, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return images * (1 - s.clamp(0, 1))
