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
    nothing_kept = run((clean, torch.zeros_like(keep)))
    assert torch.equal(nothing_kept, free)


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
], ids=["box-past-edge", "box-format", "region-size", "region-empty", "no-region"])
def test_cli_placement_bad_input(tiny_sd, checkpoint, tmp_path, capsys, extra, message):
    _normal_images(tmp_path / "normal", [(80, 56)])
    for name, region in (("regions_small", np.ones((32, 32), np.uint8) * 255), ("regions_empty", np.zeros((56, 80), np.uint8))):
        (tmp_path / name).mkdir()
        Image.fromarray(region).save(tmp_path / name / "n0.png")
    extra = [x.format(regions_small=tmp_path / "regions_small", regions_empty=tmp_path / "regions_empty") for x in extra]
    code = _generate(tiny_sd, checkpoint, tmp_path / "out", "--on-images", str(tmp_path / "normal"), *extra)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
