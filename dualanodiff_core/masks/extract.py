"""Anomaly masks from generated anomaly-part images (reference section 6), plus clean-up and SAM refinement.

The anomaly branch draws the defect on a mid-grey background (0 in [-1,1] = 0.5 in [0,1]), so the
weight-free default measures each pixel's distance from mid-grey. U-2-Net saliency (the reference's
method) and SAM box refinement are optional. Everything is torch on the images' device: morphology
uses max-pooling, connected components a vectorised union-find (no per-pixel Python loops).

Layouts: images are (B,3,H,W) float in [0,1]; :func:`to_bchw` also accepts ComfyUI's IMAGE layout
(B,H,W,3) and drops an alpha channel. Masks are (B,1,H,W) float; ComfyUI's MASK is ``mask[:, 0]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import DualAnoDiffError
from .methods import MASK_METHODS, METHODS, check_mask_method  # noqa: F401  (re-exported)
from .u2net import DEFAULT_FLOOR, saliency



@dataclass
class MaskResult:
    """Masks for a batch. ``binary``: (B,1,H,W) float 0/1. ``soft``: (B,1,H,W) float in [0,1], the
    graded version (soft edges; exactly 0 where ``binary`` found nothing nearby). ``empty[i]`` is True
    where image i holds no anomaly: its masks are all zeros, never a stretched noise map."""

    binary: torch.Tensor
    soft: torch.Tensor
    empty: list[bool] = field(default_factory=list)


def to_bchw(images: torch.Tensor) -> torch.Tensor:
    """Return images as (B,3,H,W) float. Accepts (B,3,H,W), ComfyUI's (B,H,W,3), a 4th alpha channel
    in either layout (dropped) and a single unbatched image. Values are expected in [0,1]."""
    if not isinstance(images, torch.Tensor):
        raise DualAnoDiffError(f"expected an image tensor, got {type(images).__name__}")
    x = images[None] if images.ndim == 3 else images
    if x.ndim != 4:
        raise DualAnoDiffError(f"expected images of shape (B,3,H,W) or (B,H,W,3), got {tuple(images.shape)}")
    if x.shape[1] not in (3, 4) and x.shape[-1] in (3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (3, 4):
        raise DualAnoDiffError(f"expected 3 colour channels, got images of shape {tuple(images.shape)}")
    x = x[:, :3]
    return x if x.is_floating_point() else x.float() / 255.0


# --- morphology (binary or grey (B,1,H,W) float; pixels outside the image are ignored) --------------

def dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey/binary dilation by an octagon of ``radius`` px (alternating 3x3 square and cross steps)."""
    for i in range(max(0, int(radius))):
        if i % 2 == 0:
            x = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            x = torch.maximum(F.max_pool2d(x, (3, 1), stride=1, padding=(1, 0)),
                              F.max_pool2d(x, (1, 3), stride=1, padding=(0, 1)))
    return x


def erode(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey/binary erosion, the dual of :func:`dilate` (the image border does not erode)."""
    return -dilate(-x, radius)


def label_components(fg: torch.Tensor, connectivity: int = 8) -> torch.Tensor:
    """Connected components of a boolean (B,H,W) tensor (``connectivity`` 4 or 8). Returns int64
    (B,H,W): 0 on background and, on each component, one label shared by its pixels (positive, not
    consecutive).

    Vectorised union-find on the pixel graph: each round hooks every root to the smallest root across
    its edges, then compresses paths until each pixel points at its root; a few rounds suffice even for
    long winding cracks."""
    fg = fg.bool()
    ids = torch.full(fg.shape, -1, dtype=torch.int64, device=fg.device)
    n = int(fg.sum())
    ids[fg] = torch.arange(n, device=fg.device)
    h, w = fg.shape[-2:]
    offsets = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    us, vs = [], []
    for dy, dx in offsets:
        a = ids[:, :h - dy, max(0, -dx):w - max(0, dx)]
        b = ids[:, dy:, max(0, dx):w + min(0, dx)]
        ok = (a >= 0) & (b >= 0)
        us.append(a[ok])
        vs.append(b[ok])
    u, v = torch.cat(us), torch.cat(vs)
    parent = torch.arange(n, device=fg.device)
    while True:
        pu, pv = parent[u], parent[v]
        diff = pu != pv
        if not bool(diff.any()):
            break
        pu, pv = pu[diff], pv[diff]
        # endpoints are roots here (paths fully compressed), so every hook strictly lowers a root
        parent = parent.scatter_reduce(0, torch.maximum(pu, pv), torch.minimum(pu, pv), "amin")
        while True:
            grand = parent[parent]
            if torch.equal(grand, parent):
                break
            parent = grand
    lab = torch.zeros(fg.shape, dtype=torch.int64, device=fg.device)
    lab[fg] = parent + 1
    return lab


def _component_sizes(lab: torch.Tensor) -> torch.Tensor:
    """Per pixel, the pixel count of its component (0 on background)."""
    counts = torch.zeros(lab.numel() + 1, dtype=torch.int64, device=lab.device)
    counts.scatter_add_(0, lab.view(-1), torch.ones_like(lab.view(-1)))
    counts[0] = 0
    return counts[lab]


def remove_small(fg: torch.Tensor, min_area: int) -> torch.Tensor:
    """Drop 8-connected components of a boolean (B,H,W) tensor smaller than ``min_area`` pixels."""
    if min_area <= 1 or not fg.any():
        return fg
    return _component_sizes(label_components(fg, 8)) >= min_area


def fill_holes(fg: torch.Tensor) -> torch.Tensor:
    """Fill background regions of a boolean (B,H,W) tensor that do not reach the image border."""
    bg = ~fg
    lab = label_components(bg, 4)  # 4-connected background pairs with 8-connected foreground
    border = torch.cat([lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]], dim=1).reshape(-1)
    outside = torch.zeros(lab.numel() + 1, dtype=torch.bool, device=lab.device)
    outside[border] = True
    outside[0] = False
    return fg | (bg & ~outside[lab])


def clean_mask(binary: torch.Tensor, open_px: int = 0, close_px: int = 2, holes: bool = True,
               min_area: int = 16) -> torch.Tensor:
    """Opening, closing, small-component removal, hole filling on a (B,1,H,W) 0/1 mask (in that order)."""
    x = binary.float()
    if open_px > 0:
        x = dilate(erode(x, open_px), open_px)
    if close_px > 0:
        x = erode(dilate(x, close_px), close_px)
    fg = remove_small(x[:, 0] > 0.5, min_area)
    if holes and fg.any():
        fg = fill_holes(fg)
    return fg[:, None].to(binary.dtype if binary.is_floating_point() else torch.float32)


def _finish(raw: torch.Tensor, ramp: torch.Tensor, open_px, close_px, holes, min_area) -> MaskResult:
    binary = clean_mask(raw, open_px, close_px, holes, min_area)
    # soft: the detector's graded response next to kept regions, 1 deep inside them (filled holes
    # included); stray responses away from the kept regions (removed specks, noise) are dropped.
    soft = torch.maximum(ramp.clamp(0, 1) * dilate(binary, 1), erode(binary, 1))
    empty = [not bool(b.any()) for b in binary]
    return MaskResult(binary=binary, soft=soft, empty=empty)


# --- extractors -----------------------------------------------------------------------------------

def grey_distance(images: torch.Tensor, background: float | str = 0.5) -> torch.Tensor:
    """Per pixel, the largest channel deviation from the background grey: (B,1,H,W) in [0,1].
    ``background``: a grey level, or ``"median"`` for each image's per-channel median (tolerates a
    tinted background as long as the defect covers less than half the image)."""
    x = to_bchw(images).float()
    if background == "median":
        ref = x.flatten(2).median(dim=2).values[:, :, None, None]
    elif isinstance(background, (int, float)):
        ref = float(background)
    else:
        raise DualAnoDiffError(f"background must be a grey level in [0,1] or 'median', got {background!r}")
    return (x - ref).abs().amax(dim=1, keepdim=True)


def threshold_mask(images: torch.Tensor, threshold: float = 0.1, open_px: int = 0, close_px: int = 2,
                   fill_holes: bool = True, min_area: int = 16, background: float | str = 0.5,
                   edge: float = 0.5, peak_radius: int = 3) -> MaskResult:
    """Weight-free mask: pixels whose colour differs from mid-grey by more than ``threshold``.

    ``images``: (B,3,H,W) or (B,H,W,3) in [0,1]. Edge pixels of a defect are partly grey, so each
    pixel's deviation is divided by the defect's local full strength (the largest 3x3-averaged
    deviation within ``peak_radius`` px; averaging keeps noise from inflating it, and it is never
    taken below 0.8 x the pixel's own deviation, so 1-2 px cracks are not diluted). That ratio
    estimates the pixel's coverage and is the ``soft`` mask; ``binary`` keeps pixels above
    ``threshold`` with coverage >= ``edge`` (0 disables the edge test), then :func:`clean_mask` runs.
    ``open_px`` defaults to 0 because an opening of radius 1 already erases cracks 1-2 px wide;
    ``min_area`` removes noise specks instead.
    """
    if not 0 < threshold < 1:
        raise DualAnoDiffError(f"threshold must be in (0, 1), got {threshold}")
    d = grey_distance(images, background)
    smooth = F.avg_pool2d(d, 3, stride=1, padding=1, count_include_pad=False)
    peak = dilate(torch.maximum(smooth, 0.8 * d), peak_radius)
    coverage = (d / peak.clamp_min(threshold)).clamp(0, 1)
    raw = (d > threshold) & (coverage >= edge)
    return _finish(raw, coverage, open_px, close_px, fill_holes, min_area)


def u2net_mask(model, images: torch.Tensor, threshold: float = 0.5, floor: float = DEFAULT_FLOOR,
               open_px: int = 0, close_px: int = 0, fill_holes: bool = False, min_area: int = 16) -> MaskResult:
    """The reference's mask: U-2-Net saliency (:func:`~dualanodiff_core.masks.u2net.saliency`) binarised at
    ``threshold``. The reference does no morphology; here only components under ``min_area`` px are
    dropped by default. Images whose saliency stays under ``floor`` come back empty."""
    sal = saliency(model, to_bchw(images), floor=floor)
    return _finish(sal > threshold, sal, open_px, close_px, fill_holes, min_area)


def _import_sam():
    try:
        from segment_anything import SamPredictor
    except ImportError as e:
        if (getattr(e, "name", None) or "").split(".")[0] == "torchvision":
            raise DualAnoDiffError(
                "SAM refinement: segment-anything imports torchvision, which is not installed; install the "
                "torchvision build that matches your torch (pip install torchvision==<version for your torch>)"
            ) from e
        raise DualAnoDiffError(
            "SAM refinement needs the segment-anything package (and torchvision): pip install segment-anything"
        ) from e
    return SamPredictor


def component_boxes(binary: torch.Tensor, margin: int = 0) -> list[torch.Tensor]:
    """Per image of a (B,1,H,W) mask, the XYXY pixel boxes (N,4 float, end-exclusive) of its
    8-connected components, grown by ``margin`` px and clipped to the image."""
    lab = label_components(binary[:, 0] > 0.5, 8).cpu()
    h, w = lab.shape[-2:]
    out = []
    for img in lab:
        ids, inv = torch.unique(img, return_inverse=True)
        n = len(ids)
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        inv = inv.view(-1)

        def reduce(v, how, init):
            return torch.full((n,), init, dtype=torch.int64).scatter_reduce(0, inv, v.reshape(-1), how)

        boxes = torch.stack([reduce(xs, "amin", w), reduce(ys, "amin", h),
                             reduce(xs, "amax", -1) + 1, reduce(ys, "amax", -1) + 1], dim=1)[ids > 0]
        boxes = boxes + torch.tensor([-margin, -margin, margin, margin])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        out.append(boxes.float())
    return out


def sam_refine(sam_model, images: torch.Tensor, coarse: MaskResult, box_margin: int = 4,
               clip_to_boxes: bool = True) -> MaskResult:
    """Refine a coarse mask with Segment Anything: one box prompt per connected component of
    ``coarse.binary`` (grown by ``box_margin`` px), single-mask output, union of the predictions.

    ``sam_model``: a ``segment_anything.modeling.Sam`` (any size). Predictions are clipped to their
    boxes when ``clip_to_boxes`` (SAM may otherwise grab the whole background); a component SAM misses
    keeps its coarse pixels. Images empty in ``coarse`` stay empty and are not encoded.
    The image is resized here (longest side to the encoder size, torch bilinear) and passed to
    ``SamPredictor.set_torch_image``, so torchvision is needed only because segment-anything imports it.
    """
    SamPredictor = _import_sam()
    images = to_bchw(images)
    b, _, h, w = images.shape
    predictor = SamPredictor(sam_model)
    size = predictor.transform.get_preprocess_shape(h, w, sam_model.image_encoder.img_size)
    dev, dtype = sam_model.pixel_mean.device, sam_model.pixel_mean.dtype
    binary = torch.zeros(b, 1, h, w, device=images.device)
    soft = torch.zeros_like(binary)
    for i, boxes in enumerate(component_boxes(coarse.binary, box_margin)):
        if len(boxes) == 0:
            continue
        x = images[i:i + 1].to(device=dev, dtype=torch.float32) * 255.0
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=max(size) < max(h, w))
        predictor.set_torch_image(x.to(dtype), (h, w))
        prompts = predictor.transform.apply_boxes_torch(boxes.to(dev), (h, w))
        logits, _, _ = predictor.predict_torch(None, None, boxes=prompts, multimask_output=False,
                                               return_logits=True)
        logits = logits.float().to(images.device)  # (N,1,H,W)
        ys = torch.arange(h, device=images.device).view(1, 1, h, 1)
        xs = torch.arange(w, device=images.device).view(1, 1, 1, w)
        bx = boxes.to(images.device).view(-1, 4, 1, 1)
        inside = (xs >= bx[:, 0:1]) & (xs < bx[:, 2:3]) & (ys >= bx[:, 1:2]) & (ys < bx[:, 3:4])
        hit = logits > sam_model.mask_threshold
        prob = torch.sigmoid(logits - sam_model.mask_threshold)
        if clip_to_boxes:
            hit, prob = hit & inside, prob * inside
        missed = ~hit.flatten(1).any(1)
        if missed.any():  # keep the coarse pixels inside the boxes SAM found nothing in
            fallback = (coarse.binary[i:i + 1].to(images.device) > 0.5) & inside
            hit[missed] = fallback[missed]
            prob[missed] = fallback[missed].float()
        binary[i] = hit.any(0).float()
        soft[i] = prob.amax(0)
        predictor.reset_image()
    return MaskResult(binary=binary, soft=soft, empty=[not bool(m.any()) for m in binary])


# --- entry point ----------------------------------------------------------------------------------

def grow_and_blur(result: MaskResult, grow_px: int = 0, blur_px: float = 0) -> MaskResult:
    """Dilate (``grow_px`` > 0) or erode (< 0) both masks; then Gaussian-blur the soft mask with
    sigma ``blur_px / 2`` over a ``2*blur_px+1`` window. ``binary`` is never blurred."""
    binary, soft = result.binary, result.soft
    if grow_px > 0:
        binary, soft = dilate(binary, grow_px), dilate(soft, grow_px)
    elif grow_px < 0:
        binary, soft = erode(binary, -grow_px), erode(soft, -grow_px) * erode(binary, -grow_px)
    r = int(round(blur_px))
    if r > 0:
        t = torch.arange(-r, r + 1, device=soft.device, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / (r / 2)) ** 2)
        k = (k / k.sum()).to(soft.dtype)
        s = F.pad(soft, (r, r, r, r), mode="replicate")
        s = F.conv2d(s, k.view(1, 1, 1, -1))
        soft = F.conv2d(s, k.view(1, 1, -1, 1))
    return MaskResult(binary=binary, soft=soft.clamp(0, 1), empty=[not bool(m.any()) for m in binary])


def extract_masks(images: torch.Tensor, method: str = "threshold", *, u2net=None, sam=None,
                  threshold: float | None = None, grow_px: int = 0, blur_px: float = 0,
                  open_px: int | None = None, close_px: int | None = None, fill_holes: bool | None = None,
                  min_area: int | None = None, background: float | str = 0.5, floor: float = DEFAULT_FLOOR,
                  box_margin: int = 4) -> MaskResult:
    """Masks for generated anomaly-part images; the one entry point for nodes and the generator.

    ``images``: (B,3,H,W) or ComfyUI (B,H,W,3), float in [0,1]. ``method``:
    ``"threshold"`` distance from mid-grey (no weights; ``threshold`` default 0.1),
    ``"u2net"`` U-2-Net saliency (``u2net`` = a model from ``load_u2net``; ``threshold`` default 0.5),
    ``"sam"`` a coarse mask (U-2-Net when ``u2net`` is given, else the grey threshold) refined by
    ``sam`` (a segment-anything ``Sam``) with one box per component.
    ``open_px``/``close_px``/``fill_holes``/``min_area`` left as None take the coarse method's defaults
    (:func:`threshold_mask`, :func:`u2net_mask`). Then ``grow_px`` dilates (negative erodes) both masks
    and ``blur_px`` softens the soft mask (:func:`grow_and_blur`).
    """
    check_mask_method(method, {k for k, v in (("u2net", u2net), ("sam", sam)) if v is not None})
    images = to_bchw(images)
    cleanup = {k: v for k, v in dict(open_px=open_px, close_px=close_px, fill_holes=fill_holes,
                                     min_area=min_area).items() if v is not None}
    if threshold is not None:
        cleanup["threshold"] = threshold
    if method == "u2net" or (method == "sam" and u2net is not None):
        result = u2net_mask(u2net, images, floor=floor, **cleanup)
    else:
        result = threshold_mask(images, background=background, **cleanup)
    if method == "sam":
        result = sam_refine(sam, images, result, box_margin)
    if grow_px or blur_px:
        result = grow_and_blur(result, grow_px, blur_px)
    return result
