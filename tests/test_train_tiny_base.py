"""scripts/train_tiny_base.py --marks: the base model may learn thin marks, never the defects' colour."""
import numpy as np

from dualanodiff_core.demo import world as demo_world
from repo_scripts import load_script


def test_marked_images_hold_marks_but_never_the_defect_magenta():
    script = load_script("train_tiny_base")
    rng = np.random.default_rng(0)
    drawn = [script.marked_image(rng) for _ in range(200)]
    images = np.stack([d[0] for d in drawn])
    kinds = np.array([d[1] for d in drawn])
    assert not demo_world.defect_pixels(images).any()
    assert 0.35 < kinds.mean() < 0.65  # over objects and on the canvas, about half each
    canvas = images[kinds == 1]
    marked = (np.abs(canvas - 0.5).max(-1) > 0.02).reshape(len(canvas), -1).sum(1)
    assert marked.min() >= 6 and np.median(marked) < 0.1 * 64 * 64  # every mark is there, and thin
    assert all(min(c[0], c[2]) - c[1] < 0.05 for c in (script.mark_colour(rng) for _ in range(500)))


def test_a_marks_share_outside_0_to_1_is_refused_before_anything_is_trained(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        load_script("train_tiny_base").main(["--marks", "30", "--out", str(tmp_path / "m")])
    assert "--marks is a share of the UNet's training images, between 0 and 1; got 30.0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
