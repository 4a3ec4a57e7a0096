"""BCM backgrounds for ``generate``: normal images with the object cut out, as clean unscaled latents
(reference BCM inference), from ``--backgrounds`` or, when placing with a BCM checkpoint, from each
``--on-images`` image itself."""
from __future__ import annotations

import torch

from ..errors import DualAnoDiffError


def background_latents(args, vae, size: int) -> torch.Tensor:
    """Clean unscaled latents of the good images with the object cut out (reference BCM inference)."""
    from ..training.data import _images, _load_rgb, load_object_masks, Pair

    files = _images(args.backgrounds)
    if not files:
        raise DualAnoDiffError(f"no images in --backgrounds {args.backgrounds}")
    images = torch.stack([torch.from_numpy(_load_rgb(f, size)).permute(2, 0, 1) for f in files])
    if args.object_masks:
        obj = torch.stack([torch.from_numpy(m) for m in load_object_masks([Pair(f, f) for f in files], args.object_masks, size)]).unsqueeze(1)
    elif args.u2net:
        from ..masks.u2net import load_u2net, saliency

        obj = saliency(load_u2net(args.u2net), images)
    else:
        raise DualAnoDiffError("--backgrounds needs --u2net FILE or --object-masks DIR to cut the object out")
    return encode_backgrounds(vae, images, obj)


def encode_backgrounds(vae, images: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] with the object ``obj`` (B, 1, H, W, 0..1) blacked out, as clean
    unscaled latents."""
    from ..runtime.sampling import vae_encode

    background = images * (1 - obj.to(images.dtype))  # object black, soft edge
    with torch.no_grad():
        return vae_encode(vae, background * 2 - 1, scaled=False).float().cpu()
