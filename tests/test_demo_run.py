"""The shipped tiny base model and a reduced `dualanodiff demo --place` run (16 pairs, 150 training steps,
10 sampling steps, 32 placed pairs; about 90 s on 2 CPU cores) whose metrics must stay above floors set
from measurement.

Measured on this configuration (torch 2.13.0 CPU, 2 threads, 61 s; the shipped base model and sampler of
2026-12-06):

| model                                | alignment IoU | stray defect colour | non-empty masks | global defect share | defect area ratio |
|--------------------------------------|---------------|---------------------|-----------------|---------------------|-------------------|
| with SAIM                            | 0.641         | 0.162               | 0.88 (14/16)    | 1.0 (16/16)         | 1.00              |
| without SAIM (the demo's ablation)   | 0.019         | 0.968               | 0.50 (8/16)     | 1.0 (16/16)         | 1.10              |
| SAIM broken: no pair interaction (*) | 0.027         | 0.960               | 0.81 (13/16)    | 1.0 (16/16)         | 1.20              |

(*) a mutant of branch_math.saim/saim_inference where each token attends only to itself (SAIM left as a
per-token MLP), trained and sampled like the SAIM model. The alignment IoU and the stray defect colour
separate SAIM from both failures (a factor 24 and 6); the non-empty share, the global defect share and
the defect area ratio are as good or better without SAIM or with the broken one, so their floors only
check that the pipeline makes masks, that the global branch draws defects and that they are about the
training defects' size."""
import json

import torch

from dualanodiff_core.cli import main
from dualanodiff_core.demo.run import DEMO_MODEL


def test_shipped_model_loads_like_an_sd_folder_and_samples():
    from dualanodiff_core.formats.base_model import load_base_model
    from dualanodiff_core.runtime.sampling import encode_prompts, latent_scale, make_scheduler, vae_decode

    size = sum(f.stat().st_size for f in DEMO_MODEL.rglob("*") if f.is_file())
    assert size <= 25 * 2 ** 20, "the shipped model stays small (the demo issue's budget: 25 MB)"
    base = load_base_model(DEMO_MODEL)
    assert all(next(m.parameters()).dtype == torch.float32 for m in (base.unet, base.vae, base.text_encoder))
    assert latent_scale(base.vae) == 4
    emb = encode_prompts(base.tokenizer, base.text_encoder, ["a photo of an object"])
    sched = make_scheduler("ddim", base.scheduler_config)
    sched.set_timesteps(5)
    latents = torch.randn((2, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in sched.timesteps:
            latents = sched.step(base.unet(latents, t, emb.expand(2, -1, -1)).sample, t, latents).prev_sample
        images = vae_decode(base.vae, latents)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()


def test_reduced_demo_runs_and_keeps_its_metrics(tmp_path, capsys):
    from dualanodiff_core import load_checkpoint

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--shots", "8", "--pairs", "16", "--steps", "150",
                 "--sample-steps", "10", "--place", "--cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((out / "metrics.json").read_text()) == report
    from PIL import Image

    with Image.open(out / "contact_sheet.png") as sheet:  # training | SAIM | no SAIM | placed, 8 rows of 4 tiles, x2
        assert sheet.size == ((4 * 4 * 64 + 3 * 8) * 2, 8 * 64 * 2 + 16)
    assert set(load_checkpoint(out / "checkpoints" / "demo_no_saim.safetensors").components) == {"unet_lora", "text_encoder_lora"}
    assert "saim" in load_checkpoint(out / "checkpoints" / "demo_saim.safetensors").components
    saim = report["saim"]
    # floors: measured values of this reduced run with a margin (module docstring)
    assert saim["alignment_iou"] >= FLOORS["alignment_iou"], f"SAIM no longer aligns the pair: {saim}"
    assert saim["alignment_iou"] - report["no_saim"]["alignment_iou"] >= FLOORS["saim_gain"], report
    assert saim["nonempty_mask_share"] >= FLOORS["nonempty_mask_share"], saim
    assert saim["global_defect_share"] >= FLOORS["global_defect_share"], saim
    assert saim["stray_defect_colour"] <= FLOORS["stray_defect_colour_max"], f"defect colour off the masks: {saim}"
    low, high = FLOORS["defect_area_ratio"]
    assert low <= saim["defect_area_ratio"] <= high, saim
    assert report["saim"]["pairs"] == report["no_saim"]["pairs"] == 16
    placed = report["placed"]
    assert placed["pairs"] == 32 and placed["change_outside_region"] == 0.0, placed  # 16 images x 2 variations
    assert placed["anomaly_defect_in_region"] >= FLOORS["placed_anomaly_defect_in_region"], placed
    assert placed["alignment_iou_in_region"] >= FLOORS["placed_alignment_iou_in_region"], placed


FLOORS = {
    # the SAIM checks: 0.641 with SAIM, 0.027 with a SAIM that lets no pair interact, 0.019 without SAIM;
    # 0.1 is below the geometric mean of 0.641 and 0.027 (0.13), a factor 6 and 4 from each
    "alignment_iou": 0.1,
    "saim_gain": 0.1,  # alignment IoU over the ablation's: 0.622 measured, 0.008 with the broken SAIM
    # a ceiling: 0.162 with SAIM, 0.960 with the broken SAIM and 0.968 without SAIM (geometric mean 0.39)
    "stray_defect_colour_max": 0.35,
    # sanity floors, not SAIM checks (met without SAIM or with the broken SAIM too)
    "nonempty_mask_share": 0.5,  # 14/16 measured: the anomaly branch draws defects that give masks
    "global_defect_share": 0.5,  # 16/16 measured: the global branch draws defects
    "defect_area_ratio": (1 / 3, 3.0),  # 1.00 measured: generated defects about the training defects' size
    # placement (--place): the anomaly branch held to its canvas outside the region draws inside it
    # 1.0 measured (every anomaly defect pixel inside its region); 0.52 to 0.68 with the branch left free
    "placed_anomaly_defect_in_region": 0.9,
    # 0.585 measured (guidance 2.5, --region-grow 1; 17 of 32 placed pairs have a mask); 0.506 with guidance 6,
    # 0.620 on the STAGE1 base with DDIM
    "placed_alignment_iou_in_region": 0.3,
}


def test_metrics_score_the_worlds_own_defects_as_perfect_and_shifted_masks_lower():
    import numpy as np

    from dualanodiff_core.demo import world as demo_world
    from dualanodiff_core.demo.run import diversity, metrics

    world = demo_world.samples(6, seed=3, defect="spot")
    images, masks = np.stack([s.image for s in world]), np.stack([s.mask for s in world])
    exact = metrics({"image": images, "mask": masks})
    assert exact["alignment_iou"] == exact["nonempty_mask_share"] == exact["global_defect_share"] == 1.0
    shifted = metrics({"image": images, "mask": np.roll(masks, 12, axis=2)})
    assert shifted["alignment_iou"] < 0.5
    assert diversity([masks[0], masks[0]]) == 0.0 and diversity([masks[0]]) is None


def test_bad_demo_values_stop_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--mask-threshold", "1.5"]) == 2
    assert "--mask-threshold must lie in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--pairs", "0"]) == 2
    assert "--pairs must be at least 1" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--ablation-pairs", "0"]) == 2
    assert "--ablation-pairs must be at least 1" in capsys.readouterr().err
    assert not out.exists()


def test_the_ablation_draws_fewer_pairs_unless_a_detector_trains_on_them():
    from dualanodiff_core.demo.run import DemoConfig, variant_pairs

    assert variant_pairs(DemoConfig(), "saim") == 64 and variant_pairs(DemoConfig(), "no_saim") == 16
    assert variant_pairs(DemoConfig(pairs=8), "no_saim") == 8
    assert variant_pairs(DemoConfig(evaluate=True), "no_saim") == 64
