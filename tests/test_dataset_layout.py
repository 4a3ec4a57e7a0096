"""One dataset layout for generate, the Save Dataset node and evaluate."""
from pathlib import Path

import pytest

from dualanodiff_core.generation import dataset_layout as L
from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.generation.generate import sample_paths


def test_paths_of_both_layouts_and_generate_uses_them(tmp_path):
    assert L.pair_paths(tmp_path, "bottle", "crack", 7) == {
        "image": tmp_path / "bottle/crack/image/7.png", "fg": tmp_path / "bottle/crack/fg/7.png",
        "mask": tmp_path / "bottle/crack/mask/7.png"}
    assert L.mvtec_paths(tmp_path, "bottle", "crack", 7) == {
        "image": tmp_path / "bottle/test/crack/007.png", "mask": tmp_path / "bottle/ground_truth/crack/007_mask.png"}
    paths = sample_paths(tmp_path, "bottle", "crack", 7, mvtec=True)
    assert {k: v for k, v in paths.items() if not k.startswith("mvtec_")} == L.pair_paths(tmp_path, "bottle", "crack", 7)
    assert (paths["mvtec_image"], paths["mvtec_mask"]) == tuple(L.mvtec_paths(tmp_path, "bottle", "crack", 7).values())


def test_numbering_continues_after_the_highest_index(tmp_path):
    folders = L.mvtec_folders(tmp_path, "bottle", "crack")
    assert L.next_index(folders.values()) == 0
    for p in (folders["image"] / "003.png", folders["mask"] / "011_mask.png", folders["image"] / "notes.txt"):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    assert L.next_index(folders.values()) == 12


def test_names_are_checked_and_good_is_no_mvtec_defect():
    assert L.check_names("bottle", "good", mvtec=False) == ("bottle", "good")
    with pytest.raises(DualAnoDiffError, match="'good' is MVTec's name for normal images"):
        L.check_names("bottle", "good", mvtec=True)
    with pytest.raises(DualAnoDiffError, match="--object"):
        L.check_names("../x", "crack", mvtec=False, object_what="--object")
