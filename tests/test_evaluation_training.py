"""The detector, its loss, checkpoint selection and exact resumption of an interrupted training."""
import math

import pytest
import torch

from dualanodiff_core.evaluation.detector import DiscriminativeUNet, focal_loss
from dualanodiff_core.evaluation.run import preview_indices, validation_split
from dualanodiff_core.evaluation.sources import PairPool, Pairs
from dualanodiff_core.evaluation.training import DetectorConfig, Scored, selection_score, train_detector


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_detector_shapes_and_widths():
    model = DiscriminativeUNet(4)
    out = model(torch.rand(2, 3, 64, 32))
    assert out.shape == (2, 2, 64, 32)
    maps = model.eval().anomaly_map(torch.rand(1, 3, 32, 32))
    assert maps.shape == (1, 32, 32) and 0 <= float(maps.min()) and float(maps.max()) <= 1
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.rand(1, 3, 48, 48))
    assert model.encoder[-1][0].out_channels == 32 and model.head.in_channels == 4


def test_focal_loss_matches_its_formula():
    logits = torch.randn(2, 2, 3, 3)
    masks = (torch.rand(2, 1, 3, 3) > 0.5).float()
    p = torch.softmax(logits, 1)
    total = 0.0
    for b in range(2):
        for y in range(3):
            for x in range(3):
                pt = float(p[b, int(masks[b, 0, y, x]), y, x])
                total += -((1 - pt) ** 2) * math.log(pt)
    assert abs(float(focal_loss(logits, masks)) - total / 18) < 1e-6


def _toy(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    normals = (torch.rand(n, 3, size, size, generator=g) * 60 + 80).to(torch.uint8)
    images, masks = normals.clone(), torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n):
        y = 4 + 3 * i
        masks[i, 0, y:y + 3, 4:28] = True
        images[i, :, y:y + 3, 4:28] = torch.tensor([20, 20, 220], dtype=torch.uint8).view(3, 1, 1)
    return normals, Pairs(images, masks)


class Interrupting(PairPool):
    """A pool whose draw fails once after ``after`` calls, as a killed run would stop."""

    def __init__(self, pairs, after):
        super().__init__(pairs)
        self.calls, self.after = 0, after

    def draw(self, n, gen):
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt
        return super().draw(n, gen)


def test_interrupted_training_resumes_exactly(tmp_path):
    normals, pairs = _toy()
    selection = Scored(torch.cat([normals[:2], pairs.images[:2]]), torch.cat([torch.zeros(2, 1, 32, 32, dtype=torch.bool),
                                                                                pairs.masks[:2]]),
                       torch.tensor([False, False, True, True]))
    cfg = DetectorConfig(resolution=32, epochs=4, samples_per_epoch=16, batch_size=4, lr=1e-3, base_width=4)
    whole, info = train_detector(PairPool(pairs), normals, selection, cfg, seed=3, device="cpu")
    state = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 3, after the state of epoch 2 was written
        train_detector(Interrupting(pairs, after=9), normals, selection, cfg, seed=3, device="cpu", state_path=state)
    assert state.is_file()
    resumed, info2 = train_detector(PairPool(pairs), normals, selection, cfg, seed=3, device="cpu", state_path=state)
    assert info2["history"] == info["history"] and info2["selected_step"] == info["selected_step"]
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_selection_keeps_the_best_round_and_last_keeps_the_end():
    normals, pairs = _toy()
    selection = Scored(pairs.images, pairs.masks, torch.ones(len(pairs), dtype=torch.bool))
    cfg = DetectorConfig(resolution=32, epochs=3, samples_per_epoch=8, batch_size=4, lr=1e-3, base_width=4)
    _, info = train_detector(PairPool(pairs), normals, selection, cfg, seed=0, device="cpu")
    scores = [h["score"] for h in info["history"]]
    assert len(scores) == 3 and info["selected_score"] == max(scores)
    assert info["selected_step"] == info["history"][scores.index(max(scores))]["step"]
    last = DetectorConfig(**{**cfg.settings(), "select": "last"})
    _, info = train_detector(PairPool(pairs), normals, None, last, seed=0, device="cpu")
    assert info["selection"] == "last" and info["selected_step"] == 6 and info["history"] == []


def test_selection_score_counts_unmeasurable_metrics_as_zero():
    assert selection_score({"image_auroc": float("nan"), "pixel_auroc": 0.5, "pixel_ap": 0.25, "au_pro": 0.25}) == 1.0


def test_validation_split_is_fixed_and_never_takes_everything():
    assert validation_split(1, 0.1).sum() == 0
    assert validation_split(2, 0.1).sum() == 1
    assert validation_split(50, 0.1).sum() == 5
    assert torch.equal(validation_split(50, 0.1), validation_split(50, 0.1))
    assert validation_split(3, 0.99).sum() == 2


def test_previews_cycle_through_defect_types_and_end_with_a_normal_image():
    defects = ["a", "a", "a", "b", "good", "good", "c"]
    assert preview_indices(defects, 4) == [0, 3, 6, 4]
    assert preview_indices(defects, 6) == [0, 3, 6, 1, 2, 4]
    assert preview_indices(defects, 0) == []
