"""The demo's defect world and the byte-level tokenizer."""
import numpy as np
import pytest
import torch

from dualanodiff_core.demo import world as demo_world
from dualanodiff_core.formats.byte_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, write_byte_tokenizer


@pytest.mark.parametrize("defect", [None, *demo_world.DEFECTS])
def test_world_samples_have_exact_masks_on_the_object(defect):
    for s in demo_world.samples(12, seed=3, defect=defect):
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.float32
        assert 0 <= s.image.min() and s.image.max() <= 1
        assert s.mask.shape == (64, 64) and s.mask.dtype == bool
        if defect is None:
            assert not s.mask.any()
        else:
            assert s.mask.sum() >= 12 and not (s.mask & ~s.object_mask).any(), "defects lie on the object"
        assert demo_world.iou(demo_world.defect_pixels(s.image), s.mask) == 1.0


def test_world_varies_and_defect_finder_survives_blur():
    many = demo_world.samples(200, seed=5, defect="any")
    assert {s.shape for s in many} == set(demo_world.SHAPES)
    assert {s.defect for s in many} == set(demo_world.DEFECTS)
    normal = np.stack([s.image for s in demo_world.samples(200, seed=6)])
    assert not demo_world.defect_pixels(normal).any(), "objects and background never look like a defect"
    # generated images are soft: a 3x3 box blur must keep the finder close to the true mask
    images = torch.from_numpy(np.stack([s.image for s in many])).permute(0, 3, 1, 2)
    blurred = torch.nn.functional.avg_pool2d(images, 3, 1, 1, count_include_pad=False).permute(0, 2, 3, 1).numpy()
    ious = [demo_world.iou(demo_world.defect_pixels(b), s.mask) for b, s in zip(blurred, many)]
    assert np.mean(ious) > 0.6, np.mean(ious)


def test_byte_tokenizer_is_read_by_clip_tokenizer(tmp_path):
    from dualanodiff_core.formats.base_model import load_tokenizer

    tok = load_tokenizer(write_byte_tokenizer(tmp_path))
    assert len(tok) == VOCAB_SIZE
    ids = tok(["sks", "a vfx"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (2, 77)
    assert ids[0, :5].tolist() == [BOS_ID, ord("s"), ord("k"), ord("s") + 256, EOS_ID]
    assert ids.max() < VOCAB_SIZE


def test_demo_refuses_an_unknown_scheduler_before_anything_is_written(tmp_path):
    from dualanodiff_core.demo.run import DemoConfig, run
    from dualanodiff_core.errors import DualAnoDiffError

    with pytest.raises(DualAnoDiffError, match=r"--scheduler 'dpm': choose one of .*euler-a"):
        run(DemoConfig(out=tmp_path / "demo", scheduler="dpm"))
    assert not (tmp_path / "demo").exists()


def test_contact_sheet_with_fewer_pairs_than_training_shots(tmp_path):
    """`demo --pairs 4` beside 8 training pairs: every block gets the rows all of them have."""
    import numpy as np
    from PIL import Image

    from dualanodiff_core.demo.run import contact_sheet

    def block(n):
        return {"image": np.zeros((n, 64, 64, 3), np.float32), "fg": np.zeros((n, 64, 64, 3), np.float32),
                "mask": np.zeros((n, 64, 64), bool)}

    path = contact_sheet({"training": block(8), "saim": block(4)}, tmp_path / "sheet.png")
    with Image.open(path) as sheet:
        assert sheet.size == ((2 * 4 * 64 + 8) * 2, 4 * 64 * 2 + 16)
