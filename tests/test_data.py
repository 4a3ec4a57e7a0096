"""Few-shot data: splits, matching, and the bad-input messages that list offending files."""
import numpy as np
import pytest
import torch
from PIL import Image

from dualanodiff_core.data import DataError, PairTensors, check_pairs, few_shot_count, folder_pairs, mvtec_pairs
from synthetic_data import write_mvtec_category


@pytest.mark.parametrize("total, floor, reference", [(9, 3, 3), (10, 3, 3), (12, 4, 5), (22, 7, 8), (2, 0, 0)])
def test_split_rules(total, floor, reference):
    assert few_shot_count(total, "floor") == floor
    assert few_shot_count(total, "reference") == reference
    assert few_shot_count(total, 5) == min(5, total)


def test_mvtec_takes_the_first_sorted_third(tmp_path):
    cat = write_mvtec_category(tmp_path / "bottle", n=9)
    pairs = mvtec_pairs(cat, "scratch")
    assert [p.image.name for p in pairs] == ["000.png", "001.png", "002.png"]
    assert pairs[0].mask == cat / "ground_truth" / "scratch" / "000_mask.png"
    with pytest.raises(DataError, match="no defect type 'crack'; available: scratch"):
        mvtec_pairs(cat, "crack")


def test_tensors_follow_the_reference_targets(tmp_path):
    cat = write_mvtec_category(tmp_path / "bottle", n=3)
    data = PairTensors(mvtec_pairs(cat, "scratch", 2), 64)
    assert data.images.shape == (2, 3, 64, 64) and data.images.min() >= -1 and data.images.max() <= 1
    assert set(data.masks.unique().tolist()) == {0.0, 1.0}
    batch = data.batch(torch.tensor([0, 1]), torch.tensor([True, False]), torch.tensor([False, True]))
    expected0 = data.images[0].flip(-1) * data.masks[0].flip(-1)
    assert torch.equal(batch["anomaly"][0], expected0), "anomaly = image * mask, flipped together"
    assert torch.equal(batch["mask"][1], data.masks[1].flip(-2))
    outside = batch["mask"][0].expand(3, -1, -1) == 0
    assert torch.all(batch["anomaly"][0][outside] == 0), "background of the anomaly target is mid-grey (0)"


def test_backgrounds_black_out_the_object(tmp_path):
    cat = write_mvtec_category(tmp_path / "bottle", n=3)
    obj = np.zeros((64, 64), np.float32)
    obj[16:48, 16:48] = 1
    data = PairTensors(mvtec_pairs(cat, "scratch", 1), 64, object_masks=[obj])
    assert torch.all(data.backgrounds[0, :, 20, 20] == -1)
    assert torch.equal(data.backgrounds[0, :, 2, 2], data.images[0, :, 2, 2])


def test_bad_data_lists_every_offender(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "mask"
    images.mkdir(), masks.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / "a.png")           # empty mask
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "b.png")
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(masks / "b_mask.png")  # size mismatch
    (images / "c.png").write_bytes(b"not a png")                                 # unreadable
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(masks / "c.png")
    with pytest.raises(DataError) as err:
        check_pairs(folder_pairs(images, masks))
    text = str(err.value)
    assert "a.png: empty mask" in text and "b_mask.png: size 4x4 differs from image 8x8" in text
    assert "c.png: unreadable" in text

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "d.png")       # missing mask
    with pytest.raises(DataError, match=r"no mask in .* for: .*d\.png"):
        folder_pairs(images, masks)
    with pytest.raises(DataError, match="no training pairs"):
        check_pairs([])
