"""Defects placed on the user's own normal images: the region arithmetic of placed sampling.

Given a normal image I and a region R (True where the defect may go):

- the global branch's latent is held to I's latent outside R at every step (blended-latent style):
  :func:`keep_mask` is every latent cell R touches (optionally grown by a margin), inverted; the anomaly
  branch may be held to its empty canvas outside the cells wholly inside R (:func:`inner_keep_mask`);
- the final global image is pasted back onto I with an edge feathered *inside* R
  (:func:`paste_back`), so every pixel outside R is I's own, whatever the VAE did;
- the mask is the extracted anomaly mask intersected with R (:func:`mask_in_region`).

Regions come from mask files, one box for every image, or ``auto`` (:func:`auto_region`): a box of a
training defect's size at a random place on the object, cut to the object.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DualAnoDiffError
from ..training.data import IMAGE_SUFFIXES, _images


def check_region(region: np.ndarray, image_shape: tuple, where: str, allow_empty: bool = False) -> np.ndarray:
    """A boolean (H, W) region of the image's size with at least one pixel (unless ``allow_empty``);
    clear errors otherwise."""
    region = np.asarray(region)
    if region.ndim == 3:
        region = region[..., 0]
    if region.shape != tuple(image_shape[:2]):
        raise DualAnoDiffError(f"{where}: region is {region.shape[1]}x{region.shape[0]} pixels but the image is "
                               f"{image_shape[1]}x{image_shape[0]}; give a region of the image's size")
    region = region > (127 if region.dtype == np.uint8 else 0.5)
    if not region.any() and not allow_empty:
        raise DualAnoDiffError(f"{where}: the region is empty; mark where the defect may go (white = allowed)")
    return region


def keep_mask(region: torch.Tensor, latent_size: tuple, margin: int = 1) -> torch.Tensor:
    """``(N, 1, h, w)`` float: 1 where the global latent is held to the input image (outside R grown by
    ``margin`` latent cells), 0 where it is generated. ``region``: ``(N, 1, H, W)`` bool or 0/1."""
    r = F.adaptive_max_pool2d(region.float(), latent_size)  # a cell touched by R belongs to R
    if margin > 0:
        r = F.max_pool2d(r, 2 * margin + 1, stride=1, padding=margin)
    return 1.0 - r


def inner_keep_mask(region: torch.Tensor, latent_size: tuple) -> torch.Tensor:
    """Like :func:`keep_mask` but generated only in the latent cells lying wholly inside the region (for
    the anomaly branch, whose defect must end inside it); an image whose region holds no whole cell
    falls back to the cells it touches."""
    inner = -F.adaptive_max_pool2d(-region.float(), latent_size)
    touched = F.adaptive_max_pool2d(region.float(), latent_size)
    empty = inner.flatten(1).amax(1) == 0
    inner[empty] = touched[empty]
    return 1.0 - inner


def feather_alpha(region: np.ndarray, feather: int) -> np.ndarray:
    """``(H, W)`` float in [0, 1]: 0 outside ``region`` exactly, rising over ``feather`` pixels inside its
    edge to 1 (a chessboard-distance ramp)."""
    r = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32))[None, None]
    alpha = r.clone()
    inside = r
    for _ in range(max(0, feather - 1)):
        inside = -F.max_pool2d(-inside, 3, stride=1, padding=1)  # erode by one pixel (image edge counts as inside)
        alpha = alpha + inside
    alpha = alpha / max(1, feather)
    return (alpha * r).clamp(0, 1)[0, 0].numpy()


def paste_back(generated: np.ndarray, image: np.ndarray, region: np.ndarray, feather: int = 3) -> np.ndarray:
    """``generated`` inside ``region`` (blended over ``feather`` pixels at its edge), ``image`` itself
    everywhere else, bit for bit. uint8 arrays are blended and rounded; float arrays stay float."""
    if generated.shape != image.shape:
        raise DualAnoDiffError(f"generated image {generated.shape} and input image {image.shape} differ in size")
    alpha = feather_alpha(region, feather)[..., None]
    blended = image.astype(np.float32) * (1 - alpha) + generated.astype(np.float32) * alpha
    blended = np.rint(blended).clip(0, 255).astype(np.uint8) if image.dtype == np.uint8 else blended.astype(image.dtype)
    return np.where(alpha > 0, blended, image)


def mask_in_region(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The extracted anomaly mask cut to the region (same dtype as ``mask``)."""
    return np.where(region, mask, np.zeros_like(mask))


@dataclass
class PlacementSource:
    """One normal image of ``--on-images`` and the region its defects may go to."""

    name: str           # the image file's name
    image: np.ndarray   # uint8 (H, W, 3), original size
    region: np.ndarray  # bool (H, W)
    region_from: str    # the region file's name, or "box x,y,w,h"
    object_mask: np.ndarray | None = None  # bool (H, W), where --region auto or BCM needs the object
    digest: str = ""    # of the image's pixels, so that a continued dataset is known to use the same image

    def object_at_resolution(self, size: int) -> torch.Tensor:
        """(1, size, size) float 0/1: the object mask resized for the model (bilinear, kept at >= 0.5)."""
        t = torch.from_numpy(self.object_mask.astype(np.float32))[None, None]
        return (F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False) >= 0.5).float()[0]

    def at_resolution(self, size: int) -> torch.Tensor:
        """(3, size, size) float in [0, 1], the image resized for the model."""
        from PIL import Image

        resized = Image.fromarray(self.image).resize((size, size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).permute(2, 0, 1)

    def region_at_resolution(self, size: int) -> torch.Tensor:
        """(1, size, size) bool: every model pixel the region touches."""
        r = torch.from_numpy(self.region.astype(np.float32))[None, None]
        return (F.adaptive_max_pool2d(r, (size, size)) > 0)[0] if min(self.region.shape) >= size else \
            (F.interpolate(r, size=(size, size), mode="bilinear", align_corners=False) > 0)[0]


def parse_box(text: str) -> tuple:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise DualAnoDiffError(f"--box {text!r}: give x,y,w,h in pixels, e.g. --box 40,60,32,24") from None
    if w < 1 or h < 1 or x < 0 or y < 0:
        raise DualAnoDiffError(f"--box {text!r}: x and y must be >= 0, w and h >= 1")
    return x, y, w, h


def box_region(box: tuple, shape: tuple, where: str) -> np.ndarray:
    x, y, w, h = box
    if x + w > shape[1] or y + h > shape[0]:
        raise DualAnoDiffError(f"{where}: the box {x},{y},{w},{h} reaches past the image ({shape[1]}x{shape[0]} "
                               "pixels); give a box inside it")
    region = np.zeros(shape[:2], bool)
    region[y:y + h, x:x + w] = True
    return region


def defect_sizes(training_masks: Path) -> np.ndarray:
    """``(K, 2)`` float: each training mask's defect bounding box (height, width) as a share of its image's
    (height, width). Empty masks are skipped; none left is an error naming the folder."""
    sizes = []
    for path in _images(Path(training_masks)):
        mask = read_image(path, "L", "--training-masks") > 127
        if mask.any():
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            sizes.append(((rows[-1] - rows[0] + 1) / mask.shape[0], (cols[-1] - cols[0] + 1) / mask.shape[1]))
    if not sizes:
        raise DualAnoDiffError(f"--training-masks {training_masks}: no non-empty mask there; give the folder of "
                               "the few-shot defect masks the checkpoint was trained on")
    return np.asarray(sizes, np.float64)


def threshold_object_mask(image: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """(H, W) bool: pixels whose colour differs from the image border's median colour by more than
    ``threshold`` (RGB distance / sqrt 3, in [0, 1]): the object on a plain background, no weights."""
    x = np.asarray(image, np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    return np.linalg.norm(x - np.median(border, axis=0), axis=-1) / np.sqrt(3) > threshold


# --region-grow's default: the box is 3 times the drawn training defect's size (plus 4 px), so the
# model has room to draw a whole defect of that size inside it. Measured in the demo world (docs/demo.md):
# grown by a quarter, a third of the defects were cut short by the box or not drawn at all
AUTO_GROW = 1.0


def auto_region(object_mask: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, where: str,
                grow: float = AUTO_GROW) -> np.ndarray:
    """A random region inside the object: a box the size of a randomly drawn training defect (``sizes``
    from :func:`defect_sizes`), grown by ``grow`` times its size on each side and by 2 pixels, centred
    on a random object pixel, cut to the object. Errors name ``where`` when there is no object."""
    object_mask = np.asarray(object_mask, bool)
    h, w = object_mask.shape
    ys, xs = np.nonzero(object_mask)
    if not len(ys):
        raise DualAnoDiffError(f"{where}: no object found, so no place inside it for --region auto; give its "
                               "object mask with --object-masks, or a region with --regions or --box")
    rel_h, rel_w = sizes[rng.integers(len(sizes))]
    bh = min(h, max(1, round(rel_h * h * (1 + 2 * grow))) + 4)
    bw = min(w, max(1, round(rel_w * w * (1 + 2 * grow))) + 4)
    k = rng.integers(len(ys))
    top = int(np.clip(ys[k] - bh // 2, 0, h - bh))
    left = int(np.clip(xs[k] - bw // 2, 0, w - bw))
    region = np.zeros((h, w), bool)
    region[top:top + bh, left:left + bw] = True
    return region & object_mask


def placement_sources(on_images: Path, regions: Path | None, box: str | None) -> list:
    """Every image of ``on_images`` with its region (a mask file named like it in ``regions``, or the box;
    ``regions`` None and ``box`` None: no region yet, see :func:`with_auto_regions`), checked; nothing
    is written."""
    files = _images(Path(on_images))
    skipped = sorted(p.name for p in Path(on_images).iterdir() if p.is_file() and p not in files
                     and not p.name.startswith("."))
    if skipped:
        print(f"generate: --on-images {on_images}: skipped {len(skipped)} file(s) that are not images by their "
              f"name ({', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}); images end in "
              f"{', '.join(sorted(IMAGE_SUFFIXES))}", file=sys.stderr)
    if not files:
        raise DualAnoDiffError(f"no images in --on-images {on_images}")
    parsed_box = parse_box(box) if box is not None else None
    sources = []
    for path in files:
        image = read_image(path, "RGB", "--on-images")
        if parsed_box is not None:
            region, region_from = box_region(parsed_box, image.shape, str(path)), f"box {box}"
        elif regions is not None:
            region_file = _region_file(Path(regions), path, "--regions")
            region = check_region(read_image(region_file, "L", "--regions"), image.shape, str(region_file))
            region_from = region_file.name
        else:
            region, region_from = None, "auto"
        sources.append(PlacementSource(path.name, image, region, region_from,
                                       digest=hashlib.sha256(image.tobytes()).hexdigest()[:16]))
    return sources


def read_image(path: Path, mode: str, flag: str) -> np.ndarray:
    """The image file's pixels in PIL ``mode`` ("RGB", "L"); a file that is not a readable image is a
    clear error naming it and ``flag``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        reason = "not an image PIL can read" if "cannot identify" in str(exc) else f"unreadable ({exc})"
        raise DualAnoDiffError(f"{flag}: {path} is {reason}; remove it from the folder or replace it with a "
                               "PNG/JPEG image") from None


def object_masks_of(sources: list, object_masks: Path | None, u2net=None, threshold: float = 0.1) -> list:
    """(H, W) bool object mask per source: a file named like the image in ``object_masks``, else U-2-Net's
    saliency above 0.5 (``u2net``: a loaded model), else :func:`threshold_object_mask`."""
    masks = []
    for s in sources:
        if object_masks is not None:
            path = _region_file(Path(object_masks), Path(s.name), "--object-masks")
            masks.append(check_region(read_image(path, "L", "--object-masks"), s.image.shape, str(path),
                                      allow_empty=True))
        elif u2net is not None:
            from ..masks.u2net import saliency

            x = torch.from_numpy(s.image.astype(np.float32) / 255).permute(2, 0, 1)[None]
            masks.append(saliency(u2net, x)[0, 0].numpy() > 0.5)
        else:
            masks.append(threshold_object_mask(s.image, threshold))
    return masks


def with_auto_regions(sources: list, sizes: np.ndarray, variations: int, seed: int, grow: float = AUTO_GROW) -> list:
    """One source per (image, variation), each with its own ``auto`` region on its object drawn from
    ``seed`` + index (index = image * variations + variation, the pair's index)."""
    out = []
    for n, s in enumerate(sources):
        for v in range(variations):
            i = n * variations + v
            region = auto_region(s.object_mask, sizes, np.random.default_rng(seed + i), s.name, grow)
            ys, xs = np.nonzero(region)
            out.append(replace(s, region=region, region_from=f"auto {xs.min()},{ys.min()},"
                               f"{xs.max() - xs.min() + 1},{ys.max() - ys.min() + 1}"))
    return out


def _region_file(regions: Path, image: Path, flag: str) -> Path:
    for name in (image.name, f"{image.stem}.png", f"{image.stem}_mask.png"):
        if (regions / name).is_file():
            return regions / name
    white = "where the defect may go" if flag == "--regions" else "the object"
    raise DualAnoDiffError(f"no mask for {image.name} in {flag} {regions} (looked for {image.stem}.png and "
                           f"{image.stem}_mask.png; white = {white})")


def placed_pair(pair: dict, source: PlacementSource, variation: int) -> dict:
    """A generated pair at model resolution brought back to the source image: the global image pasted
    onto it (outside the region the source's own pixels), the anomaly image resized, the mask resized
    and cut to the region."""
    from PIL import Image

    h, w = source.image.shape[:2]
    generated = np.asarray(Image.fromarray(pair["image"]).resize((w, h), Image.BICUBIC))
    fg = np.asarray(Image.fromarray(pair["fg"]).resize((w, h), Image.BICUBIC))
    mask = np.asarray(Image.fromarray(pair["mask"]).resize((w, h), Image.NEAREST))
    mask = mask_in_region(mask, source.region)
    extra = {"source": source.name, "source_digest": source.digest, "region": source.region_from,
             "variation": variation}
    return {"image": paste_back(generated, source.image, source.region), "fg": fg, "mask": mask,
            "empty": bool(pair["empty"] or not mask.any()), "extra": extra}


def run_sources(args, bcm: bool) -> list:
    """One PlacementSource per pair (pair i: image i // variations), regions checked or drawn (auto); each
    image's object mask found once where ``--region auto`` or a BCM checkpoint (``bcm``) needs it."""
    sources = placement_sources(args.on_images, args.regions, args.box)
    if args.region == "auto" or bcm:
        u2net = None
        if args.u2net and not args.object_masks:
            from ..masks.u2net import load_u2net

            u2net = load_u2net(args.u2net)
        objects = object_masks_of(sources, args.object_masks, u2net)
        sources = [replace(s, object_mask=m) for s, m in zip(sources, objects)]
    if args.region != "auto":
        return [s for s in sources for _ in range(args.variations)]
    return with_auto_regions(sources, defect_sizes(args.training_masks), args.variations, args.seed,
                             region_grow(args))


def check_same_sources(done: dict, sources: list, on_images: Path, root: Path) -> None:
    """Refuse to continue a placed dataset whose finished pairs were made from other images than the ones
    their indices now give (``sources``: one per pair): an image added before others, removed or changed
    since would shift every later pair onto another image. Images added after all the others in name
    order continue it exactly as one run on the final folder would."""
    wrong = [i for i, e in sorted(done.items()) if "source" in e and (
        i >= len(sources) or e["source"] != sources[i].name or e.get("source_digest", sources[i].digest)
        != sources[i].digest)]
    if not wrong:
        return
    recorded = {e["source"]: e.get("source_digest") for e in done.values() if "source" in e}
    now = {s.name: s.digest for s in sources}
    last = max(recorded)
    changes = [f"{label}: {', '.join(names)}" for label, names in (
        ("added before the last one used", sorted(n for n in now if n not in recorded and n < last)),
        ("removed", sorted(n for n in recorded if n not in now)),
        ("changed", sorted(n for n in recorded if n in now and recorded[n] not in (None, now[n]))),
    ) if names]
    i = wrong[0]
    pair = f"pair {i} was made from {done[i]['source']}, " + (
        f"now it would be {sources[i].name}" if i < len(sources) and sources[i].name != done[i]["source"]
        else "which is no longer the same image" if i < len(sources) else "which no longer exists")
    raise DualAnoDiffError(f"{root} was made from other images than --on-images {on_images} holds now "
                           f"({'; '.join(changes) or pair}; {pair}): continuing would mix two datasets; restore "
                           "the folder as it was, or choose another --output-dir, --object or --defect")


def region_grow(args) -> float:
    return AUTO_GROW if args.region_grow is None else args.region_grow


def regions_setting(args) -> str:
    """How ``generate``'s regions were given, for the dataset's recorded settings."""
    if args.region == "auto":
        return f"auto grow {region_grow(args):g}" + (f" objects {Path(args.object_masks).name}" if args.object_masks
                                                     else " u2net" if args.u2net else " threshold")
    return f"box {args.box}" if args.box is not None else str(args.regions)
