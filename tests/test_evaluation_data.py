"""The evaluation's data: the split never leaks, synthetic sets are found in every layout the project
writes, bad sets are refused with the file named, and the two baselines make what they claim."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dualanodiff_core.demo import world as demo_world
from dualanodiff_core.training.data import few_shot_count
from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.evaluation.baselines import CropPaste, object_masks, real_only
from dualanodiff_core.evaluation.loading import load_category, tensor_pairs
from dualanodiff_core.evaluation.split import folder_category, mvtec_category
from dualanodiff_core.evaluation.synthetic_sets import find_pairs, load_source, parse_set_argument
from synthetic_data import write_mvtec_category


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pairs_set(root, obj="bottle", defect="scratch", n=3, size=32, manifest=None, mask_size=None):
    leaf = root / obj / defect
    for i in range(n):
        _png(leaf / "image" / f"{i}.png", np.full((size, size, 3), 90, np.uint8))
        _png(leaf / "fg" / f"{i}.png", np.full((size, size, 3), 128, np.uint8))
        m = np.zeros((mask_size or size,) * 2, np.uint8)
        m[4:8, 4:20] = 255
        _png(leaf / "mask" / f"{i}.png", m)
    if manifest is not None:
        (leaf / "manifest.jsonl").write_text("".join(json.dumps({"index": i}) + "\n" for i in manifest))
    return leaf


@pytest.mark.parametrize("split", ["floor", "reference", 2, 5])
@pytest.mark.parametrize("n", [3, 7, 12])
def test_split_never_leaks_shots_into_the_test_set(tmp_path, split, n):
    cat = write_mvtec_category(tmp_path / "bottle", n=n, size=32)
    if few_shot_count(n, split) >= n:
        with pytest.raises(DualAnoDiffError, match="none is left"):
            mvtec_category(cat, split=split)
        return
    c = mvtec_category(cat, split=split)
    shot_names = {s.image.name for s in c.shots}
    test_names = {t.image.name for t in c.test if t.defect == "scratch"}
    assert shot_names.isdisjoint(test_names)
    assert len(shot_names) == few_shot_count(n, split)
    assert sorted(shot_names | test_names) == sorted(p.name for p in (cat / "test" / "scratch").iterdir())
    # the shots are the first ones by name, as `train --split` takes them
    assert sorted(shot_names) == sorted(p.name for p in sorted((cat / "test" / "scratch").iterdir()))[:len(shot_names)]
    assert {t.image.name for t in c.test if t.defect == "good"} == {p.name for p in (cat / "test" / "good").iterdir()}
    assert all(t.mask is None for t in c.test if t.defect == "good")


def test_split_refuses_missing_and_mis_sized_ground_truth(tmp_path):
    cat = write_mvtec_category(tmp_path / "bottle", n=6, size=32)
    (cat / "ground_truth" / "scratch" / "004_mask.png").unlink()
    with pytest.raises(DualAnoDiffError, match="004_mask.png"):
        mvtec_category(cat)
    _png(cat / "ground_truth" / "scratch" / "004_mask.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(DualAnoDiffError, match="004_mask.png is 16x16"):
        mvtec_category(cat)
    with pytest.raises(DualAnoDiffError, match="crack"):
        mvtec_category(cat, defects=["crack"])


def test_folder_test_set_and_shots(tmp_path):
    for i in range(3):
        _png(tmp_path / "images" / f"{i}.png", np.zeros((32, 32, 3), np.uint8))
        _png(tmp_path / "normal" / f"{i}.png", np.zeros((32, 32, 3), np.uint8))
    _png(tmp_path / "masks" / "0_mask.png", np.full((32, 32), 255, np.uint8))
    _png(tmp_path / "shots" / "s.png", np.zeros((32, 32, 3), np.uint8))
    _png(tmp_path / "shot_masks" / "s.png", np.full((32, 32), 255, np.uint8))
    c = folder_category(tmp_path / "images", tmp_path / "masks", tmp_path / "normal", tmp_path / "shots",
                        tmp_path / "shot_masks")
    assert [t.defect for t in c.test] == ["defect", "good", "good"]
    assert len(c.shots) == 1 and len(c.normals) == 3
    with pytest.raises(DualAnoDiffError, match="few-shot images in the test set"):  # the same folder twice
        folder_category(tmp_path / "images", tmp_path / "masks", tmp_path / "normal", tmp_path / "images",
                        tmp_path / "images")


def test_sets_are_found_in_every_layout(tmp_path):
    _pairs_set(tmp_path / "gen", n=3)
    _pairs_set(tmp_path / "gen", obj="cable", n=2)
    for given in (tmp_path / "gen", tmp_path / "gen" / "bottle", tmp_path / "gen" / "bottle" / "scratch"):
        found = find_pairs(given, "bottle")
        assert list(found) == ["scratch"] and len(found["scratch"]) == 3
    with pytest.raises(DualAnoDiffError, match="several objects"):
        find_pairs(tmp_path / "gen", "zipper")
    # Save Dataset's MVTec layout
    mv = tmp_path / "saved" / "bottle"
    for i in range(4):
        _png(mv / "test" / "scratch" / f"{i:03d}.png", np.zeros((32, 32, 3), np.uint8))
        _png(mv / "ground_truth" / "scratch" / f"{i:03d}_mask.png", np.full((32, 32), 255, np.uint8))
    _png(mv / "test" / "good" / "000.png", np.zeros((32, 32, 3), np.uint8))
    for given in (tmp_path / "saved", mv):
        found = find_pairs(given, "bottle")
        assert list(found) == ["scratch"] and len(found["scratch"]) == 4


def test_manifest_lists_the_finished_samples(tmp_path):
    _pairs_set(tmp_path / "gen", n=4, manifest=[0, 2])
    found = find_pairs(tmp_path / "gen", "bottle")
    assert [p.name for p, _ in found["scratch"]] == ["0.png", "2.png"]


def test_manifest_names_the_files_whatever_their_numbering(tmp_path):
    leaf = _pairs_set(tmp_path / "padded", n=3)
    for kind in ("image", "fg", "mask"):
        for i in range(3):
            (leaf / kind / f"{i}.png").rename(leaf / kind / f"{i:04d}.png")
    files = [{"index": i, "files": {k: f"bottle/scratch/{k}/{i:04d}.png" for k in ("image", "fg", "mask")}}
             for i in (0, 2)]
    (leaf / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in files))
    assert [p.name for p, _ in find_pairs(tmp_path / "padded", "bottle")["scratch"]] == ["0000.png", "0002.png"]
    (leaf / "manifest.jsonl").write_text("".join(json.dumps({"index": i}) + "\n" for i in (1, 2)))
    assert [p.name for p, _ in find_pairs(tmp_path / "padded", "bottle")["scratch"]] == ["0001.png", "0002.png"]
    (leaf / "manifest.jsonl").write_text(json.dumps({"index": 0, "files": {"image": "x/image/a.png"}}) + "\n")
    with pytest.raises(DualAnoDiffError, match=r"manifest.jsonl lists samples a but .*image holds 0000.png, "
                                               r"0001.png, 0002.png: no listed sample has its image there"):
        find_pairs(tmp_path / "padded", "bottle")


def test_bad_sets_are_refused_naming_the_file(tmp_path):
    leaf = _pairs_set(tmp_path / "nomask", n=2)
    shutil.rmtree(leaf / "mask")
    with pytest.raises(DualAnoDiffError, match=r"nomask/bottle/scratch has image/ but no mask/"):
        load_source("s", tmp_path / "nomask", "bottle", ["scratch"])
    _pairs_set(tmp_path / "small", n=2, mask_size=16)
    with pytest.raises(DualAnoDiffError, match=r"mask .*small/bottle/scratch/mask/0.png is 16x16 but its image"):
        load_source("s", tmp_path / "small", "bottle", ["scratch"])
    (tmp_path / "empty" / "bottle" / "scratch" / "image").mkdir(parents=True)
    (tmp_path / "empty" / "bottle" / "scratch" / "mask").mkdir(parents=True)
    with pytest.raises(DualAnoDiffError, match="holds no image/mask pairs"):
        load_source("s", tmp_path / "empty", "bottle", ["scratch"])
    _pairs_set(tmp_path / "other", defect="crack", n=2)
    with pytest.raises(DualAnoDiffError, match=r"no image/mask pairs of the evaluated defect types \(scratch\)"):
        load_source("s", tmp_path / "other", "bottle", ["scratch"])
    with pytest.raises(DualAnoDiffError, match="does not exist"):
        load_source("s", tmp_path / "missing", "bottle", ["scratch"])
    with pytest.raises(DualAnoDiffError, match="built-in baseline"):
        parse_set_argument(f"real-only={tmp_path}")


def test_loaded_category_keeps_shots_out_of_the_test_tensors(tmp_path):
    cat = write_mvtec_category(tmp_path / "bottle", n=9, size=32)
    data = load_category(mvtec_category(cat), 32)
    assert len(data.shots) == 3 and len(data.test) == 6 + 9
    for shot in data.shots.images:
        assert not any(torch.equal(shot, t) for t, d in zip(data.test.images, data.test.defects) if d != "good")


def _world(n, seed, defect):
    w = demo_world.samples(n, seed=seed, defect=defect)
    return w, tensor_pairs([s.image for s in w], [s.mask for s in w] if defect else
                           np.zeros((n, 64, 64), bool), defect or "good")


def test_object_estimate_finds_the_world_objects():
    world, pairs = _world(6, 2, None)
    est = object_masks(pairs.images)
    ious = [demo_world.iou(e.numpy(), s.object_mask) for e, s in zip(est, world)]
    assert min(ious) > 0.9, ious
    texture = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)
    assert object_masks(texture).all()  # nothing stands out from the border: the whole image


def test_crop_paste_puts_real_defect_pixels_on_the_object_at_the_mask():
    shots_world, shots = _world(4, 1, "scratch")
    normal_world, normals = _world(5, 3, None)
    gen = torch.Generator().manual_seed(0)
    images, masks = CropPaste(shots, normals.images).draw(12, gen)
    assert images.shape == (12, 3, 64, 64) and masks.shape == (12, 1, 64, 64)
    magenta = demo_world.defect_pixels(images.permute(0, 2, 3, 1).numpy())
    for m, found in zip(masks[:, 0].bool().numpy(), magenta):
        assert m.sum() >= 8
        assert demo_world.iou(m, found) > 0.6          # the mask marks the pasted defect
    objects = np.stack([s.object_mask for s in normal_world]).any(0)
    assert (masks[:, 0].bool().numpy() & ~objects).sum() < 0.1 * masks.sum()  # pasted on objects
    again = CropPaste(shots, normals.images).draw(12, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], images)


def test_real_only_draws_the_shots_flipped_and_jittered():
    _, shots = _world(3, 1, "scratch")
    images, masks = real_only(shots).draw(16, torch.Generator().manual_seed(0))
    sums = {int(m.sum()) for m in masks}
    assert sums <= {int(m.sum()) for m in shots.masks}      # flips keep each mask's area
    assert masks.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1
