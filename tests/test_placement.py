"""Placement on the user's images, core arithmetic: outside the region nothing changes (latents held
exactly after the last step, pixels pasted back bit for bit), masks stay inside the region."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dual_fixtures import dual_unet
from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.generation.placement import (
    check_region, feather_alpha, keep_mask, mask_in_region, paste_back,
)
from dualanodiff_core.runtime.sampling import make_scheduler, sample_pairs
from dualanodiff_core.formats.base_model import BUNDLED_CONFIG, _read_json

SCHEDULER_CONFIG = _read_json(BUNDLED_CONFIG / "scheduler" / "scheduler_config.json")


def _box(h, w, y0, y1, x0, x1):
    r = np.zeros((h, w), bool)
    r[y0:y1, x0:x1] = True
    return r


def test_keep_mask_covers_every_cell_the_region_touches_plus_margin():
    region = torch.from_numpy(_box(64, 64, 20, 29, 33, 40))[None, None]
    keep0 = keep_mask(region, (8, 8), margin=0)[0, 0]
    generated = (keep0 == 0).nonzero().tolist()
    # pixels 20..28 -> cells 2..3, pixels 33..39 -> cells 4
    assert sorted(map(tuple, generated)) == [(2, 4), (3, 4)]
    keep1 = keep_mask(region, (8, 8), margin=1)[0, 0]
    assert int((keep1 == 0).sum()) == 4 * 3  # rows 1..4, cols 3..5
    assert set(torch.unique(keep1).tolist()) == {0.0, 1.0}


def test_inner_keep_mask_generates_only_cells_wholly_inside_the_region():
    from dualanodiff_core.generation.placement import inner_keep_mask

    region = torch.from_numpy(np.stack([_box(64, 64, 16, 40, 8, 33), _box(64, 64, 20, 23, 8, 20)]))[:, None]
    keep = inner_keep_mask(region, (8, 8))
    assert sorted(map(tuple, (keep[0, 0] == 0).nonzero().tolist())) == [(r, c) for r in (2, 3, 4) for c in (1, 2, 3)]
    # a region too thin to hold a whole cell: the cells it touches
    assert torch.equal(keep[1], keep_mask(region[1:], (8, 8), margin=0)[0])


def test_feather_is_zero_outside_and_ramps_inside():
    region = _box(32, 32, 8, 24, 8, 24)
    alpha = feather_alpha(region, 3)
    assert (alpha[~region] == 0).all()
    assert alpha[16, 16] == 1
    assert alpha[8, 16] == pytest.approx(1 / 3) and alpha[9, 16] == pytest.approx(2 / 3) and alpha[10, 16] == 1


def test_paste_back_keeps_every_outside_pixel_bit_for_bit():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    region = _box(32, 32, 5, 20, 10, 30)
    out = paste_back(generated, image, region, feather=3)
    assert out.dtype == np.uint8
    assert np.array_equal(out[~region], image[~region])
    core = _box(32, 32, 7, 18, 12, 28)  # 2 px inside the edge: fully generated
    assert np.array_equal(out[core], generated[core])
    mask = np.full((32, 32), 255, np.uint8)
    assert np.array_equal(mask_in_region(mask, region) > 0, region)


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "euler"])
def test_held_global_rows_end_exactly_on_the_image_outside_the_region(scheduler):
    dual = dual_unet()
    n, size = 2, (8, 8)
    gen = torch.Generator().manual_seed(4)
    clean = torch.randn(n, 4, *size, generator=gen)
    region = torch.zeros(n, 1, 64, 64, dtype=torch.bool)
    region[0, :, 8:24, 8:40] = True
    region[1, :, 32:64, 0:16] = True
    keep = keep_mask(region, size, margin=1)
    cond, uncond = torch.randn(2, 77, 32, generator=gen), torch.randn(2, 77, 32, generator=gen)

    def run(keep_arg):
        return sample_pairs(dual, make_scheduler(scheduler, SCHEDULER_CONFIG), cond, uncond,
                            [torch.Generator().manual_seed(s) for s in (10, 11)], size, steps=4, guidance=2.5,
                            keep=keep_arg)

    placed = run((clean, keep))
    free = run(None)
    outside = keep.bool().expand(-1, 4, -1, -1)
    assert torch.equal(placed[0::2][outside], clean[outside])
    assert not torch.allclose(placed[0::2][~outside], free[0::2][~outside])  # the region was generated
    # holding nothing of a zero image is exactly free sampling (a non-zero image also enters the
    # start, as in ComfyUI, where the LATENT's samples are added to the first noise)
    nothing_kept = run((torch.zeros_like(clean), torch.zeros_like(keep)))
    assert torch.equal(nothing_kept, free)


def test_anomaly_rows_held_to_their_canvas_outside_the_region():
    dual = dual_unet()
    size = (8, 8)
    gen = torch.Generator().manual_seed(6)
    clean, canvas = torch.randn(2, 4, *size, generator=gen), torch.randn(1, 4, *size, generator=gen)
    region = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    region[:, :, 16:40, 16:40] = True
    keep = keep_mask(region, size, margin=1)
    cond, uncond = torch.randn(2, 77, 32, generator=gen), torch.randn(2, 77, 32, generator=gen)
    out = sample_pairs(dual, make_scheduler("ddim", SCHEDULER_CONFIG), cond, uncond,
                       [torch.Generator().manual_seed(s) for s in (1, 2)], size, steps=4, guidance=2.5,
                       keep=(clean, keep), keep_anomaly=(canvas, keep))
    outside = keep.bool().expand(-1, 4, -1, -1)
    assert torch.equal(out[0::2][outside], clean[outside])
    assert torch.equal(out[1::2][outside], canvas.expand(2, -1, -1, -1)[outside])
    assert (out[1::2][~outside] - canvas.expand(2, -1, -1, -1)[~outside]).abs().max() > 0.1


@pytest.mark.parametrize("region, shape, message", [
    (np.zeros((8, 8), np.uint8), (8, 8, 3), "the region is empty"),
    (np.ones((8, 4), np.uint8) * 255, (8, 8, 3), "region is 4x8 pixels but the image is 8x8"),
], ids=["empty", "size"])
def test_bad_regions_are_refused(region, shape, message):
    with pytest.raises(DualAnoDiffError, match=message):
        check_region(region, shape, "regions/a.png")


def _normal_images(folder, sizes):
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = {}
    for k, (w, h) in enumerate(sizes):
        images[f"n{k}.png"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(images[f"n{k}.png"]).save(folder / f"n{k}.png")
    return images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from dual_fixtures import random_layers
    from dualanodiff_core.formats.checkpoint import (
        DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint,
    )
    from tiny_models import tiny_unet

    layers = random_layers(tiny_unet(), rank=4, seed=7)
    ckpt = DualAnoDiffCheckpoint(layers_to_tensors(layers), make_metadata(4, ["unet_lora", "saim"]))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "place.safetensors", ckpt)


def _generate(tiny_sd, ckpt, out, *extra):
    from dualanodiff_core.cli import main

    return main(["generate", "--base-model", str(tiny_sd), "--checkpoint", str(ckpt), "--output-dir", str(out),
                 "--object", "part", "--defect", "dent", "--resolution", "64", "--steps", "3",
                 "--mask-threshold", "0.05", *extra])


def test_cli_places_defects_inside_regions_and_keeps_every_other_pixel(tiny_sd, checkpoint, tmp_path):
    images = _normal_images(tmp_path / "normal", [(80, 56), (64, 64)])  # any size, not only the model's
    regions = tmp_path / "regions"
    regions.mkdir()
    boxes = {"n0.png": _box(56, 80, 10, 40, 20, 60), "n1.png": _box(64, 64, 0, 24, 30, 64)}
    for name, region in boxes.items():
        Image.fromarray(region.astype(np.uint8) * 255).save(regions / name.replace(".png", "_mask.png"))
    out = tmp_path / "out"
    assert _generate(tiny_sd, checkpoint, out, "--on-images", str(tmp_path / "normal"), "--regions", str(regions),
                     "--variations", "2", "--seed", "5") == 0
    root = out / "part" / "dent"
    entries = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert [(e["index"], e["source"], e["variation"], e["seed"]) for e in entries] == [
        (0, "n0.png", 0, 5), (1, "n0.png", 1, 6), (2, "n1.png", 0, 7), (3, "n1.png", 1, 8)]
    assert entries[0]["region"] == "n0_mask.png"
    changed_somewhere = False
    for e in entries:
        src, region = images[e["source"]], boxes[e["source"]]
        placed = np.asarray(Image.open(root / "image" / f"{e['index']}.png"))
        mask = np.asarray(Image.open(root / "mask" / f"{e['index']}.png"))
        assert placed.shape == src.shape and mask.shape == src.shape[:2]
        assert np.array_equal(placed[~region], src[~region])  # bit for bit outside the region
        assert not mask[~region].any()
        changed_somewhere |= bool((placed[region] != src[region]).any())
    assert changed_somewhere
    # run again: nothing to do, nothing rewritten
    before = (root / "image" / "0.png").stat().st_mtime_ns
    assert _generate(tiny_sd, checkpoint, out, "--on-images", str(tmp_path / "normal"), "--regions", str(regions),
                     "--variations", "2", "--seed", "5") == 0
    assert (root / "image" / "0.png").stat().st_mtime_ns == before


@pytest.mark.parametrize("extra, message", [
    (["--box", "70,10,20,20"], "the box 70,10,20,20 reaches past the image"),
    (["--box", "1,2"], "give x,y,w,h in pixels"),
    (["--regions", "{regions_small}"], "region is 32x32 pixels but the image is 80x56"),
    (["--regions", "{regions_empty}"], "the region is empty"),
    ([], "needs where the defects may go"),
    (["--regions", "{regions_text}"], "--regions: {regions_text}/n0.png is not an image PIL can read; remove it"),
    (["--on-images", "{images_text}", "--box", "1,1,4,4"],
     "--on-images: {images_text}/notes.png is not an image PIL can read; remove it"),
], ids=["box-past-edge", "box-format", "region-size", "region-empty", "no-region", "region-not-an-image",
        "image-not-an-image"])
def test_cli_placement_bad_input(tiny_sd, checkpoint, tmp_path, capsys, extra, message):
    _normal_images(tmp_path / "normal", [(80, 56)])
    for name, region in (("regions_small", np.ones((32, 32), np.uint8) * 255), ("regions_empty", np.zeros((56, 80), np.uint8))):
        (tmp_path / name).mkdir()
        Image.fromarray(region).save(tmp_path / name / "n0.png")
    (tmp_path / "regions_text").mkdir()
    (tmp_path / "regions_text" / "n0.png").write_text("a region drawn in words")
    _normal_images(tmp_path / "images_text", [(80, 56)])
    (tmp_path / "images_text" / "notes.png").write_text("not a picture")
    names = {k: tmp_path / k for k in ("regions_small", "regions_empty", "regions_text", "images_text")}
    extra = [x.format(**names) for x in extra]
    code = _generate(tiny_sd, checkpoint, tmp_path / "out", "--on-images", str(tmp_path / "normal"), *extra)
    err = capsys.readouterr().err
    assert code == 2
    assert message.format(**names) in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_placement_continues_only_on_the_images_it_was_made_from(tiny_sd, checkpoint, tmp_path, capsys):
    folder = tmp_path / "normal"
    images = _normal_images(folder, [(64, 64), (64, 64)])
    (folder / "n0.png").rename(folder / "001.png")
    (folder / "n1.png").rename(folder / "001_crop.png")
    (folder / "notes.txt").write_text("shot on the second line")
    out = tmp_path / "out"
    place = ("--on-images", str(folder), "--box", "8,8,24,24")
    assert _generate(tiny_sd, checkpoint, out, *place) == 0
    assert "skipped 1 file(s) that are not images by their name (notes.txt)" in capsys.readouterr().err
    manifest = out / "part" / "dent" / "manifest.jsonl"
    before = manifest.read_text()
    # an image added before the others would shift every later pair onto another image: refused, named
    Image.fromarray(images["n0.png"][::-1]).save(folder / "000.png")
    assert _generate(tiny_sd, checkpoint, out, *place) == 2
    err = capsys.readouterr().err
    assert "was made from other images than --on-images" in err
    assert "added before the last one used: 000.png" in err
    assert "pair 0 was made from 001.png, now it would be 000.png" in err
    (folder / "000.png").unlink()
    # an image whose pixels changed under the same name: refused
    Image.fromarray(images["n1.png"][:, ::-1]).save(folder / "001_crop.png")
    assert _generate(tiny_sd, checkpoint, out, *place) == 2
    assert "changed: 001_crop.png" in capsys.readouterr().err
    assert manifest.read_text() == before
    Image.fromarray(images["n1.png"]).save(folder / "001_crop.png")
    # an image added after the others continues the dataset exactly as one run on the final folder makes it
    Image.fromarray(images["n0.png"][:, ::-1]).save(folder / "002.png")
    assert _generate(tiny_sd, checkpoint, out, *place) == 0
    assert _generate(tiny_sd, checkpoint, tmp_path / "one_run", *place) == 0
    continued = [json.loads(x) for x in manifest.read_text().splitlines()]
    one_run = [json.loads(x) for x in (tmp_path / "one_run" / "part" / "dent" / "manifest.jsonl").read_text().splitlines()]
    assert [(e["index"], e["source"], e["variation"]) for e in continued] == [
        (0, "001.png", 0), (1, "001_crop.png", 0), (2, "002.png", 0)]
    assert continued == one_run
    for i in range(3):
        for kind in ("image", "mask"):
            assert (out / "part" / "dent" / kind / f"{i}.png").read_bytes() == \
                (tmp_path / "one_run" / "part" / "dent" / kind / f"{i}.png").read_bytes()


def test_auto_region_is_a_training_defect_sized_box_on_the_object():
    from dualanodiff_core.generation.placement import auto_region

    obj = _box(64, 64, 10, 50, 20, 60)
    sizes = np.array([[0.125, 0.25]])  # 8 x 16 pixels at 64 px
    for seed in range(20):
        region = auto_region(obj, sizes, np.random.default_rng(seed), "img.png", grow=0.25)
        assert region.any() and not region[~obj].any()
        ys, xs = np.nonzero(region)
        assert ys.max() - ys.min() + 1 <= 8 * 1.5 + 4 and xs.max() - xs.min() + 1 <= 16 * 1.5 + 4
    full = auto_region(np.ones((64, 64), bool), sizes, np.random.default_rng(3), "img.png", grow=0.25)
    ys, xs = np.nonzero(full)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (16, 28)  # 8 * 1.5 + 4, 16 * 1.5 + 4
    full = auto_region(np.ones((64, 64), bool), sizes, np.random.default_rng(3), "img.png")
    ys, xs = np.nonzero(full)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (28, 52)  # the default grow 1: 8 * 3 + 4, 16 * 3 + 4
    again = auto_region(obj, sizes, np.random.default_rng(3), "img.png")
    assert np.array_equal(again, auto_region(obj, sizes, np.random.default_rng(3), "img.png"))
    with pytest.raises(DualAnoDiffError, match="img.png: no object found"):
        auto_region(np.zeros((64, 64), bool), sizes, np.random.default_rng(0), "img.png")


def test_threshold_object_mask_finds_the_object_on_a_plain_background():
    from dualanodiff_core.generation.placement import threshold_object_mask

    image = np.full((32, 40, 3), 60, np.uint8)
    image[8:20, 10:30] = (200, 120, 40)
    assert np.array_equal(threshold_object_mask(image), _box(32, 40, 8, 20, 10, 30))


def test_defect_sizes_are_the_training_boxes(tmp_path):
    from dualanodiff_core.generation.placement import defect_sizes

    Image.fromarray(_box(64, 32, 4, 12, 0, 16).astype(np.uint8) * 255).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "empty.png")
    np.testing.assert_allclose(defect_sizes(tmp_path), [[8 / 64, 16 / 32]])
    (tmp_path / "a.png").unlink()
    with pytest.raises(DualAnoDiffError, match="no non-empty mask"):
        defect_sizes(tmp_path)


def _auto_inputs(tmp_path):
    images = _normal_images(tmp_path / "normal", [(80, 56), (64, 64)])
    objects = {"n0.png": _box(56, 80, 8, 48, 10, 70), "n1.png": _box(64, 64, 16, 48, 16, 48)}
    (tmp_path / "objects").mkdir()
    for name, obj in objects.items():
        Image.fromarray(obj.astype(np.uint8) * 255).save(tmp_path / "objects" / name)
    (tmp_path / "training_masks").mkdir()
    Image.fromarray(_box(64, 64, 20, 26, 10, 40).astype(np.uint8) * 255).save(tmp_path / "training_masks" / "0.png")
    return images, objects


def test_cli_region_auto_places_inside_the_object(tiny_sd, checkpoint, tmp_path):
    images, objects = _auto_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["--on-images", str(tmp_path / "normal"), "--region", "auto", "--training-masks",
            str(tmp_path / "training_masks"), "--object-masks", str(tmp_path / "objects"), "--variations", "3"]
    assert _generate(tiny_sd, checkpoint, out, *args) == 0
    root = out / "part" / "dent"
    entries = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 6 and all(e["regions"].startswith("auto grow 1 objects") for e in entries)
    boxes = set()
    for e in entries:
        x, y, w, h = (int(v) for v in e["region"].removeprefix("auto ").split(","))
        boxes.add((e["source"], x, y, w, h))
        src, obj = images[e["source"]], objects[e["source"]]
        bbox = _box(*src.shape[:2], y, y + h, x, x + w)
        assert not bbox[~obj].any(), "the region lies on the object"
        placed = np.asarray(Image.open(root / "image" / f"{e['index']}.png"))
        mask = np.asarray(Image.open(root / "mask" / f"{e['index']}.png"))
        assert np.array_equal(placed[~bbox], src[~bbox]) and not mask[~bbox].any()
    assert len(boxes) == 6, "each variation draws its own place"
    # the same command again: the same regions are drawn, so the folder is complete and nothing is redone
    assert _generate(tiny_sd, checkpoint, out, *args) == 0
    assert len((root / "manifest.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("extra, message", [
    (["--region", "auto"], "add --training-masks DIR"),
    (["--region", "auto", "--training-masks", "{masks}", "--object-masks", "{empty_objects}"],
     "n0.png: no object found"),
    (["--box", "1,1,4,4", "--training-masks", "{masks}"], "--training-masks is for --region auto"),
    (["--box", "1,1,4,4", "--region", "auto", "--training-masks", "{masks}"], "one of: --regions DIR"),
    (["--box", "1,1,4,4", "--region-grow", "0.5"], "--region-grow is for --region auto"),
    (["--region", "auto", "--training-masks", "{masks}", "--region-grow", "-1"], "--region-grow must be at least 0"),
], ids=["no-training-masks", "no-object", "masks-without-auto", "two-region-kinds", "grow-without-auto",
        "negative-grow"])
def test_cli_region_auto_bad_input(tiny_sd, checkpoint, tmp_path, capsys, extra, message):
    _auto_inputs(tmp_path)
    (tmp_path / "empty_objects").mkdir()
    for name, (w, h) in (("n0.png", (80, 56)), ("n1.png", (64, 64))):
        Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / "empty_objects" / name)
    extra = [x.format(masks=tmp_path / "training_masks", empty_objects=tmp_path / "empty_objects") for x in extra]
    code = _generate(tiny_sd, checkpoint, tmp_path / "out", "--on-images", str(tmp_path / "normal"), *extra)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_anomaly_outside_is_recorded_and_needs_on_images(tiny_sd, checkpoint, tmp_path, capsys):
    images = _normal_images(tmp_path / "normal", [(64, 64)])
    out = tmp_path / "out"
    assert _generate(tiny_sd, checkpoint, out, "--on-images", str(tmp_path / "normal"), "--box", "8,8,24,24",
                     "--anomaly-outside", "free") == 0
    entry = json.loads((out / "part" / "dent" / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["anomaly_outside"] == "free" and entry["regions"] == "box 8,8,24,24"
    placed = np.asarray(Image.open(out / "part" / "dent" / "image" / "0.png"))
    region = _box(64, 64, 8, 32, 8, 32)
    assert np.array_equal(placed[~region], images["n0.png"][~region])
    # continuing the folder with the anomaly branch on its canvas (the default) would mix two datasets
    assert _generate(tiny_sd, checkpoint, out, "--on-images", str(tmp_path / "normal"), "--box", "8,8,24,24") == 2
    assert "anomaly_outside" in capsys.readouterr().err
    assert _generate(tiny_sd, checkpoint, tmp_path / "plain", "--anomaly-outside", "free") == 2
    assert "add --on-images DIR" in capsys.readouterr().err
