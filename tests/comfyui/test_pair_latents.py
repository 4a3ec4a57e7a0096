"""The LATENT and CONDITIONING pairing helpers of nodes/paired_sampling.py on tiny tensors: inpainting masks,
extra LATENT keys, and the refusals (the survivors of the mutation run in docs/testing.md)."""
from __future__ import annotations

import pytest
import torch

from workflow_fixtures import pack_module


@pytest.fixture(scope="module")
def S(pack):
    return pack_module(pack, "nodes.paired_sampling")


@pytest.fixture(scope="module")
def DualAnoDiffError(pack):
    return pack_module(pack, "dualanodiff_core.errors").DualAnoDiffError


def _rows(n, offset=0.0):
    return torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 4, 2, 2) + offset


def test_a_noise_mask_acts_on_its_own_latents_rows_only(S, DualAnoDiffError):
    mask = torch.stack([torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), 0.75)])  # one per image
    paired = S.pair_latents({"samples": _rows(2), "noise_mask": mask, "batch_index": [5, 6], "extra": "kept"},
                            {"samples": _rows(2, 10)})
    assert paired["samples"][:, 0, 0, 0].tolist() == [0, 10, 1, 11]
    # the global rows are held to the input outside their mask; the anomaly rows are generated everywhere
    assert paired["noise_mask"][:, 0, 0, 0].tolist() == [0.25, 1.0, 0.75, 1.0]
    assert "batch_index" not in paired, "the images' batch indices no longer name rows"
    assert paired["extra"] == "kept" and S.is_paired(paired)
    one = torch.full((1, 1, 2, 2), 0.5)
    assert S.pair_latents({"samples": _rows(2), "noise_mask": one})["noise_mask"][:, 0, 0, 0].tolist() == \
        [0.5, 1.0, 0.5, 1.0], "one mask is shared by the global rows"
    both = S.pair_latents({"samples": _rows(2)}, {"samples": _rows(2, 10), "noise_mask": one})
    assert both["noise_mask"][:, 0, 0, 0].tolist() == [1.0, 0.5, 1.0, 0.5]
    with pytest.raises(DualAnoDiffError, match="noise mask of 3 images for a LATENT of 2"):
        S.pair_latents({"samples": _rows(2), "noise_mask": torch.ones(3, 1, 2, 2)})


def test_splitting_gives_each_branch_its_rows_of_the_noise_mask(S):
    mask = torch.arange(4, dtype=torch.float32)[:, None, None, None].expand(4, 1, 2, 2)
    g, a = S.split_latents({"samples": _rows(4), "noise_mask": mask, "batch_index": [0, 1, 2, 3], "extra": 1,
                            S.PAIRED: True})
    assert g["samples"][:, 0, 0, 0].tolist() == [0, 2] and a["samples"][:, 0, 0, 0].tolist() == [1, 3]
    assert g["noise_mask"][:, 0, 0, 0].tolist() == [0, 2] and a["noise_mask"][:, 0, 0, 0].tolist() == [1, 3]
    for branch in (g, a):
        assert branch["extra"] == 1 and "batch_index" not in branch and S.PAIRED not in branch
    shared = S.split_latents({"samples": _rows(4), "noise_mask": torch.ones(1, 1, 2, 2)})
    assert all("noise_mask" not in b for b in shared), "a mask not made of pair rows is not split"


def test_refusals_name_the_count(S, DualAnoDiffError):
    with pytest.raises(DualAnoDiffError, match="a paired LATENT must have an even batch, got 3"):
        S.paired_latent({"samples": _rows(3), S.PAIRED: True})
    even = {"samples": _rows(4), S.PAIRED: True}
    assert S.paired_latent(even) is even
    with pytest.raises(DualAnoDiffError, match="3 images, an odd number"):
        S.split_latents({"samples": _rows(3)})
    cond = [[torch.zeros(1, 77, 8), {}]]
    with pytest.raises(DualAnoDiffError, match="the global conditioning has 2 entries and the anomaly one 1"):
        S.pair_conditioning(cond * 2, cond)
