"""`dualanodiff train` end to end on a tiny model: outputs, resume, BCM."""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dualanodiff_core import load_checkpoint
from dualanodiff_core.cli import main
from dualanodiff_core.training import step as step_module
from dualanodiff_core.training import trainer as trainer_module
from synthetic_data import write_object_masks


def _train(tiny_sd, data, out, *extra):
    argv = ["train", "--mvtec", str(data), "--defect", "scratch", "--split", "3", "--base-model", str(tiny_sd),
            "--output-dir", str(out), "--resolution", "64", "--rank", "4", "--pairs-per-step", "2", *extra]
    return main(argv)


def test_train_writes_checkpoint_config_and_validation(tiny_sd, mvtec_bottle, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_sd, mvtec_bottle, out, "--steps", "3", "--checkpoint-every", "2", "--validate-every", "3",
                  "--validation-steps", "2", "--validation-pairs", "2") == 0
    ckpt = load_checkpoint(out / "bottle_scratch.safetensors")
    assert set(ckpt.components) == {"unet_lora", "saim", "text_encoder_lora"}
    assert ckpt.rank == 4 and ckpt.provenance["steps"] == 3
    assert ckpt.provenance["pairs"] == ["000.png", "001.png", "002.png"]
    ups = [v for k, v in ckpt.tensors.items() if k.endswith("lora_q.up")]
    assert any(u.abs().max() > 0 for u in ups), "training must move the zero-initialised LoRA up weights"
    config = json.loads((out / "training_config.json").read_text())
    assert config["steps"] == 3 and config["lr"] == 2e-5 and config["defect"] == "scratch"
    grid = Image.open(out / "validation" / "step-000003.png")
    assert grid.size == (3 * 64, 2 * 64), "rows of global | anomaly | mask"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_sd, mvtec_bottle, tmp_path, monkeypatch):
    common = ("--steps", "4", "--checkpoint-every", "2", "--validate-every", "0", "--save-dtype", "fp32")
    assert _train(tiny_sd, mvtec_bottle, tmp_path / "straight", *common) == 0

    real_step = trainer_module.DualTrainer.train_step

    def crash_at_third_step(self, step):
        if step == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, step)

    monkeypatch.setattr(trainer_module.DualTrainer, "train_step", crash_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_sd, mvtec_bottle, tmp_path / "resumed", *common)
    monkeypatch.setattr(trainer_module.DualTrainer, "train_step", real_step)
    assert _train(tiny_sd, mvtec_bottle, tmp_path / "resumed", *common, "--resume", "latest") == 0

    a = load_file(str(tmp_path / "straight" / "bottle_scratch.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "bottle_scratch.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_bcm_training_with_object_masks(tiny_sd, mvtec_bottle, tmp_path):
    masks = write_object_masks(tmp_path / "objects", ["000", "001", "002"])
    out = tmp_path / "bcm"
    assert _train(tiny_sd, mvtec_bottle, out, "--steps", "2", "--bcm", "--object-masks", str(masks),
                  "--validate-every", "2", "--validation-steps", "2", "--no-text-encoder-lora") == 0
    ckpt = load_checkpoint(out / "bottle_scratch.safetensors")
    assert set(ckpt.components) == {"unet_lora", "saim", "bcm"}
    gammas = [v for k, v in ckpt.tensors.items() if k.endswith("bcm.gamma")]
    assert gammas and any(g.abs().item() > 0 for g in gammas), "the BCM gates must receive gradients"


@pytest.mark.parametrize("argv, message", [
    (["--images", "x"], "--images needs --masks"),
    (["--mvtec", "x"], "--mvtec needs --defect"),
    ([], "give either --mvtec"),
    (["--mvtec", "x", "--defect", "y", "--bcm"], "--bcm needs --u2net"),
])
def test_bad_option_combinations(tmp_path, capsys, argv, message):
    assert main(["train", "--base-model", "m", "--output-dir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_data_stops_before_loading_anything_heavy(tiny_sd, tmp_path, capsys):
    (tmp_path / "img").mkdir(), (tmp_path / "mask").mkdir()
    assert main(["train", "--images", str(tmp_path / "img"), "--masks", str(tmp_path / "mask"), "--base-model",
                 str(tiny_sd), "--output-dir", str(tmp_path / "o")]) == 2
    assert "no training pairs found" in capsys.readouterr().err


def test_epoch_batches_pass_over_every_pair_once_per_pass_and_resume_alike():
    from argparse import Namespace

    args = Namespace(batches="epoch", pairs_per_step=4, seed=3)
    g = torch.Generator()
    passes = [torch.cat([step_module.batch_indices(args, 7, s, 0, g) for s in range(2 * e, 2 * e + 2)]) for e in range(3)]
    for p in passes:
        assert sorted(p.tolist()) == list(range(7)), "each pass holds every pair once (4 + the 3 left)"
    assert len({tuple(p.tolist()) for p in passes}) == 3, "each pass in its own order"
    again = torch.cat([step_module.batch_indices(args, 7, s, 0, torch.Generator()) for s in (2, 3)])
    assert torch.equal(again, passes[1]), "a step's pairs depend on seed, step and process only"
    other = torch.cat([step_module.batch_indices(args, 7, s, 1, g) for s in (0, 1)])
    assert not torch.equal(other, passes[0]), "processes draw their own passes"
    random = step_module.batch_indices(Namespace(batches="random", pairs_per_step=4, seed=3), 7, 0, 0,
                                          torch.Generator().manual_seed(1))
    assert torch.equal(random, torch.randint(7, (4,), generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("category, flip, expected", [("cable", "reference", False), ("bottle", "reference", True),
                                                      ("bottle", "none", False)])
def test_flips_reach_the_batches_by_category(tiny_sd, tmp_path, monkeypatch, category, flip, expected):
    from dualanodiff_core.training.data import PairTensors
    from synthetic_data import write_mvtec_category

    data = write_mvtec_category(tmp_path / category, n=6)
    seen = []
    real_batch = PairTensors.batch

    def record(self, indices, hflip, vflip):
        seen.append(bool(hflip.any() or vflip.any()))
        return real_batch(self, indices, hflip, vflip)

    monkeypatch.setattr(PairTensors, "batch", record)
    assert _train(tiny_sd, data, tmp_path / "run", "--steps", "4", "--flip", flip, "--validate-every", "0",
                  "--checkpoint-every", "0", "--no-text-encoder-lora") == 0
    assert any(seen) is expected and len(seen) == 4
