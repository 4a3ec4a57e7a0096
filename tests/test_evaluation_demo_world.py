"""The evaluation in the demo's toy world, as the demo calls it, at a tiny size: the world's own defects
(an oracle) must help a detector more than grey noise with random masks; sets come as folders or in memory."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dualanodiff_core.demo import world as demo_world
from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.evaluation.demo_world_eval import DemoEvalConfig, evaluate_demo_world, world_data
from dualanodiff_core.evaluation.loading import tensor_pairs

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _write_generate_layout(root, samples):
    leaf = root / "world" / "scratch"
    for sub in ("image", "fg", "mask"):
        (leaf / sub).mkdir(parents=True)
    for i, s in enumerate(samples):
        Image.fromarray((s.image * 255 + 0.5).astype(np.uint8)).save(leaf / "image" / f"{i}.png")
        Image.fromarray((s.image * 255 + 0.5).astype(np.uint8)).save(leaf / "fg" / f"{i}.png")
        Image.fromarray(s.mask.astype(np.uint8) * 255).save(leaf / "mask" / f"{i}.png")
    (leaf / "manifest.jsonl").write_text("".join(json.dumps({"index": i}) + "\n" for i in range(len(samples))))
    return leaf


def test_world_test_set_is_held_out_from_the_shots():
    cfg = DemoEvalConfig(size=SIZE, test_defects=6, test_normals=4, normals=8)
    data = world_data(cfg)
    assert len(data.test) == 10 and data.test.defects.count("good") == 4 and len(data.shots) == cfg.shots
    for shot in data.shots.images:
        assert not any(torch.equal(shot, t) for t in data.test.images)
    assert data.test.masks[:6].flatten(1).any(1).all() and not data.test.masks[6:].any()


def test_world_oracle_beats_noise(tmp_path):
    oracle = demo_world.samples(24, seed=77, defect="scratch", size=SIZE)
    folder = _write_generate_layout(tmp_path / "oracle", oracle)
    rng = np.random.default_rng(0)
    noise_masks = np.zeros((24, SIZE, SIZE), bool)
    for m in noise_masks:
        y, x = rng.integers(0, SIZE - 6, 2)
        m[y:y + 4, x:x + 4] = True
    noise = tensor_pairs(rng.random((24, SIZE, SIZE, 3)).astype(np.float32), noise_masks, "scratch")
    cfg = DemoEvalConfig(size=SIZE, test_defects=12, test_normals=12, normals=24, epochs=5, samples_per_epoch=64,
                         batch_size=8, base_width=8, lr=5e-3, baselines=(), cpu=True)
    summary = evaluate_demo_world({"oracle": folder, "noise": noise}, tmp_path / "out", cfg, log=lambda m: None)
    assert list(summary["sets"]) == ["oracle", "noise"]
    o, n = summary["sets"]["oracle"]["mean"], summary["sets"]["noise"]["mean"]
    assert o["pixel_ap"] > n["pixel_ap"] + 0.3 and o["au_pro"] > n["au_pro"] + 0.2, (o, n)
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "predictions.png").is_file()


def test_world_refuses_an_unknown_defect(tmp_path):
    with pytest.raises(DualAnoDiffError, match="choose one of"):
        evaluate_demo_world({}, tmp_path, DemoEvalConfig(defect="dent"))


def test_world_mixes_the_shots_into_every_set_but_the_unmixed(tmp_path):
    sets = {name: _write_generate_layout(tmp_path / name, demo_world.samples(8, seed=seed, defect="scratch", size=SIZE))
            for name, seed in (("oracle", 77), ("ablation", 78))}
    cfg = DemoEvalConfig(size=SIZE, test_defects=4, test_normals=4, normals=8, epochs=1, samples_per_epoch=16,
                         batch_size=8, base_width=4, baselines=(), mix_real=0.5, unmixed=("ablation",), cpu=True)
    summary = evaluate_demo_world(sets, tmp_path / "out", cfg, log=lambda m: None)
    assert [(n, s["kind"]) for n, s in summary["sets"].items()] == [
        ("oracle", "synthetic"), ("ablation", "synthetic"), ("real-only", "real-only"), ("real+oracle", "mixed")]
    assert "real shots + generated set oracle (50 % real)" in (tmp_path / "out" / "report.md").read_text()
