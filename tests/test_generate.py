"""`dualanodiff generate`: layouts and manifest, pixels against a direct computation, seeds, resume (also split
over processes), BCM backgrounds. Bad input: tests/test_bad_input.py."""
import json

import numpy as np
import pytest
from PIL import Image

from dual_fixtures import random_layers
from dualanodiff_core.formats.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint
from dualanodiff_core.cli import main
from synthetic_data import write_object_masks
from tiny_models import tiny_unet


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    folder = tmp_path_factory.mktemp("ckpts")
    for bcm in (False, True):
        unet = tiny_unet()
        layers = random_layers(unet, rank=4, bcm=bcm, seed=7)
        comps = ["unet_lora", "saim"] + (["bcm"] if bcm else [])
        ckpt = DualAnoDiffCheckpoint(layers_to_tensors(layers), make_metadata(4, comps))
        out[bcm] = save_checkpoint(folder / f"bcm{int(bcm)}.safetensors", ckpt)
    return out


def _generate(tiny_sd, ckpt, out, *extra):
    return main(["generate", "--base-model", str(tiny_sd), "--checkpoint", str(ckpt), "--output-dir", str(out),
                 "--object", "bottle", "--defect", "scratch", "--resolution", "64", "--steps", "3", *extra])


def _pixels(path):
    return np.asarray(Image.open(path))


def _direct_samples(tiny_sd, ckpt_path, seeds, steps=3, guidance=2.5):
    """Global and anomaly images (uint8 HxWx3) of ``seeds``, computed here from the method's
    description (reference-method.md sections 1 and 6) instead of through `generate`/`sample_pairs`:
    per pair its own noise for both rows drawn from seed ``s``, PNDM (the reference's scheduler), one
    UNet call per step on ``[uncond pairs | cond pairs]`` with the global prompt on even rows and the
    anomaly prompt on odd rows, classifier-free guidance, then the VAE. Also returns the float
    anomaly images (B,3,H,W) in [0,1]."""
    import torch
    from diffusers import PNDMScheduler

    from dualanodiff_core import load_checkpoint, load_dual_unet
    from dualanodiff_core.formats.base_model import load_base_model

    base = load_base_model(tiny_sd)
    dual = load_dual_unet(base.unet, load_checkpoint(ckpt_path), text_encoder=base.text_encoder)
    ids = base.tokenizer(["a vfx with sks", "sks", ""], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    scale = 2 ** (len(base.vae.config.block_out_channels) - 1)
    out_global, out_anomaly, anomaly_float = [], [], []
    with torch.no_grad():
        g_emb, a_emb, neg = base.text_encoder(ids)[0]
        for s in seeds:  # one pair at a time: a sample depends on its seed only
            latents = torch.randn((2, 4, 64 // scale, 64 // scale), generator=torch.Generator().manual_seed(s))
            sched = PNDMScheduler.from_config(base.scheduler_config)
            sched.set_timesteps(steps)
            latents = latents * sched.init_noise_sigma
            context = torch.stack([neg, neg, g_emb, a_emb])
            for t in sched.timesteps:
                x = sched.scale_model_input(torch.cat([latents, latents]), t)
                uncond, cond = dual(x, t, context).sample.chunk(2)
                latents = sched.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
            images = ((base.vae.decode(latents / base.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
            u8 = (images.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
            out_global.append(u8[0])
            out_anomaly.append(u8[1])
            anomaly_float.append(images[1])
    return out_global, out_anomaly, torch.stack(anomaly_float)


def _assert_same_pixels(got, expected, what):
    """Exact: the direct computation runs the same float operations (distinct seeds differ by up to
    3 grey levels on this tiny model, so a tolerance would hide a wrong seed)."""
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() == 0, f"{what}: up to {int(diff.max())} grey levels from the direct computation " \
                            f"on {(diff > 0).mean():.1%} of the pixels"


def test_layout_manifest_and_mvtec(tiny_sd, checkpoints, tmp_path):
    assert _generate(tiny_sd, checkpoints[False], tmp_path, "-n", "3", "--batch-size", "2", "--mvtec-layout",
                     "--mask-threshold", "0.018") == 0  # the tiny VAE draws near-grey: a low threshold gives partial masks
    root = tmp_path / "bottle" / "scratch"
    for sub in ("image", "fg", "mask"):
        assert sorted(p.name for p in (root / sub).iterdir()) == ["0.png", "1.png", "2.png"]
    assert _pixels(root / "image" / "0.png").shape == (64, 64, 3)
    assert _pixels(root / "mask" / "0.png").shape == (64, 64)
    assert set(np.unique(_pixels(root / "mask" / "1.png"))) <= {0, 255}
    assert (tmp_path / "bottle" / "test" / "scratch" / "002.png").is_file()
    assert (tmp_path / "bottle" / "ground_truth" / "scratch" / "002_mask.png").is_file()
    lines = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
    assert [e["index"] for e in lines] == [0, 1, 2] and [e["seed"] for e in lines] == [0, 1, 2]
    assert lines[0]["scheduler"] == "pndm" and lines[0]["steps"] == 3 and isinstance(lines[0]["mask_empty"], bool)
    mask = _pixels(root / "mask" / "2.png") > 0
    assert lines[2]["mask_empty"] == (not mask.any())
    # values: each saved file is the right picture of the right sample, not just a file of the right shape
    from dualanodiff_core.masks.extract import extract_masks

    global_imgs, anomaly, anomaly_float = _direct_samples(tiny_sd, checkpoints[False], [0, 1, 2])
    expected_masks = extract_masks(anomaly_float, "threshold", threshold=0.018).binary[:, 0].numpy()
    assert 0 < expected_masks.sum() < expected_masks.size, "the fixture must give partial masks to compare"
    for i in range(3):
        _assert_same_pixels(_pixels(root / "image" / f"{i}.png"), global_imgs[i], f"image/{i}.png")
        _assert_same_pixels(_pixels(root / "fg" / f"{i}.png"), anomaly[i], f"fg/{i}.png")
        assert not np.array_equal(global_imgs[i], anomaly[i])
        saved_mask = _pixels(root / "mask" / f"{i}.png")
        assert np.array_equal(saved_mask > 0, expected_masks[i] > 0.5), f"mask/{i}.png is not the mask of fg/{i}.png"
        assert lines[i]["mask_empty"] == (not expected_masks[i].any())
        assert np.array_equal(_pixels(tmp_path / "bottle" / "test" / "scratch" / f"{i:03d}.png"), _pixels(root / "image" / f"{i}.png"))
        assert np.array_equal(_pixels(tmp_path / "bottle" / "ground_truth" / "scratch" / f"{i:03d}_mask.png"), saved_mask)


def test_ancestral_schedulers_draw_each_pairs_step_noise_from_its_own_seed(tiny_sd, checkpoints, tmp_path):
    # euler-a and ddpm add fresh noise in every step: drawn from the pair's own generator, a pair is the
    # same in a batch of 3 as alone (drawn from one generator for the batch, pair 1 would differ)
    for scheduler in ("euler-a", "ddpm"):
        whole, alone = tmp_path / scheduler / "whole", tmp_path / scheduler / "alone"
        assert _generate(tiny_sd, checkpoints[False], whole, "-n", "3", "--batch-size", "3", "--scheduler", scheduler) == 0
        assert _generate(tiny_sd, checkpoints[False], alone, "-n", "3", "--batch-size", "1", "--scheduler", scheduler) == 0
        for i in range(3):
            for sub in ("image", "fg"):
                assert np.array_equal(_pixels(whole / f"bottle/scratch/{sub}/{i}.png"),
                                      _pixels(alone / f"bottle/scratch/{sub}/{i}.png")), (scheduler, sub, i)
        assert not np.array_equal(_pixels(whole / "bottle/scratch/image/0.png"), _pixels(whole / "bottle/scratch/image/1.png"))


def test_seeds_batches_and_resume(tiny_sd, checkpoints, tmp_path, monkeypatch):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _generate(tiny_sd, checkpoints[False], a, "-n", "4", "--batch-size", "4") == 0
    assert _generate(tiny_sd, checkpoints[False], b, "-n", "2", "--batch-size", "1") == 0
    first = (b / "bottle/scratch/image/1.png").stat().st_mtime_ns
    assert _generate(tiny_sd, checkpoints[False], b, "-n", "4", "--batch-size", "1") == 0  # resumes at 2
    assert (b / "bottle/scratch/image/1.png").stat().st_mtime_ns == first, "finished samples are never rewritten"
    # an older manifest (no run_seed) that lost the lines of samples 0 and 3, stopped while saving sample 3
    # (its files are there): resuming keeps the seeds (sample 1 = seed 1 says the run's seed is 0) and
    # redoes 0 and 3, overwriting what sample 3 left
    manifest = b / "bottle/scratch/manifest.jsonl"
    entries = [json.loads(x) for x in manifest.read_text().splitlines()]
    kept = [{k: v for k, v in e.items() if k != "run_seed"} for e in entries if e["index"] in (1, 2)]
    manifest.write_text("".join(json.dumps(e) + "\n" for e in kept))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(b / "bottle/scratch/image/3.png")
    assert _generate(tiny_sd, checkpoints[False], b, "-n", "4", "--batch-size", "1") == 0
    assert (b / "bottle/scratch/image/1.png").stat().st_mtime_ns == first
    for i in range(4):
        for sub in ("image", "fg"):
            assert np.array_equal(_pixels(a / f"bottle/scratch/{sub}/{i}.png"), _pixels(b / f"bottle/scratch/{sub}/{i}.png")), \
                "a sample depends on its seed only, not on the batch it ran in"
    assert len((b / "bottle/scratch/manifest.jsonl").read_text().splitlines()) == 4
    assert _generate(tiny_sd, checkpoints[False], c, "-n", "1", "--seed", "100") == 0
    assert not np.array_equal(_pixels(a / "bottle/scratch/fg/0.png"), _pixels(c / "bottle/scratch/fg/0.png"))
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [e["index"] for e in lines] == [1, 2, 0, 3], "one process only appends to its manifest"
    assert [e["seed"] for e in sorted(lines, key=lambda e: e["index"])] == [0, 1, 2, 3]
    # values: the resumed sample 3 is seed 3 and --seed 100 moves sample 0 to seed 100
    global_imgs, anomaly, _ = _direct_samples(tiny_sd, checkpoints[False], [3, 100])
    _assert_same_pixels(_pixels(b / "bottle/scratch/image/3.png"), global_imgs[0], "resumed image/3.png")
    _assert_same_pixels(_pixels(b / "bottle/scratch/fg/3.png"), anomaly[0], "resumed fg/3.png")
    _assert_same_pixels(_pixels(c / "bottle/scratch/image/0.png"), global_imgs[1], "image/0.png of --seed 100")
    _assert_same_pixels(_pixels(c / "bottle/scratch/fg/0.png"), anomaly[1], "fg/0.png of --seed 100")

    # spread over two processes (accelerate launch --num_processes 2): each writes its own manifest part
    # and the main process merges them at its end; run here one after the other with a stand-in Accelerator
    import accelerate
    import torch

    rank = [1]

    class TwoProcesses:
        def __init__(self, cpu=False):
            self.device, self.process_index, self.num_processes = torch.device("cpu"), rank[0], 2
            self.is_main_process = self.is_local_main_process = rank[0] == 0

        def wait_for_everyone(self):
            pass

    monkeypatch.setattr(accelerate, "Accelerator", TwoProcesses)
    d = tmp_path / "d"
    root = d / "bottle/scratch"
    assert _generate(tiny_sd, checkpoints[False], d, "-n", "4", "--batch-size", "1") == 0  # process 1: 1 and 3
    assert [p.name for p in root.glob("manifest*")] == ["manifest.part1.jsonl"]
    rank[0] = 0  # the main process, started later: 1 and 3 are done, of 0 and 2 it takes 0, then merges
    assert _generate(tiny_sd, checkpoints[False], d, "-n", "4", "--batch-size", "1") == 0
    assert [p.name for p in root.glob("manifest*")] == ["manifest.jsonl"]
    assert [json.loads(x)["index"] for x in (root / "manifest.jsonl").read_text().splitlines()] == [0, 1, 3]
    for i in (0, 1, 3):
        assert np.array_equal(_pixels(root / f"fg/{i}.png"), _pixels(a / f"bottle/scratch/fg/{i}.png"))


def _spy_on_sampler(monkeypatch):
    """Record what `generate` hands the paired sampler and the latents it gets back (the generated
    images before the VAE: the tiny test VAE decodes nearly everything to grey, so PNGs hide most of
    what the backgrounds do)."""
    import dualanodiff_core.runtime.sampling as sampling

    calls, real = [], sampling.sample_pairs

    def spy(*args, **kwargs):
        latents = real(*args, **kwargs)
        calls.append({"backgrounds": kwargs.get("backgrounds"), "latents": latents.clone()})
        return latents

    monkeypatch.setattr(sampling, "sample_pairs", spy)
    return calls


@pytest.fixture(scope="module")
def bcm_sd(tiny_sd, tmp_path_factory):
    """tiny_sd with a VAE encoder that sees its input: tiny_sd's encoder (weights x 0.05) maps every
    image to nearly the same latent (1e-3 apart), which would hide what a background holds."""
    import shutil

    import torch
    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("bcm_sd") / "model"
    shutil.copytree(tiny_sd, folder)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    torch.manual_seed(0)
    fresh = AutoencoderKL(**{k: v for k, v in vae.config.items() if not k.startswith("_")})  # default init
    vae.encoder.load_state_dict(fresh.encoder.state_dict())
    vae.quant_conv.load_state_dict(fresh.quant_conv.state_dict())
    vae.save_pretrained(folder / "vae")
    return folder


def _expected_backgrounds(base_model, folder, masks, indices):
    """Reference-method.md section 4, computed here: the good image with the object cut out (object
    black), VAE-encoded without the 0.18215 scaling; sample i takes the i-th image (cyclically)."""
    import torch

    from dualanodiff_core.formats.base_model import load_base_model

    files = sorted(folder.iterdir())
    vae = load_base_model(base_model).vae
    out = []
    for i in indices:
        f = files[i % len(files)]
        image = torch.from_numpy(_pixels(f).astype(np.float32) / 255).permute(2, 0, 1)
        obj = torch.from_numpy((_pixels(masks / f"{f.stem}.png") > 127).astype(np.float32))
        with torch.no_grad():
            out.append(vae.encode((image * (1 - obj))[None] * 2 - 1).latent_dist.mean[0])
    return torch.stack(out)


def test_bcm_checkpoint_on_your_images_takes_each_image_as_its_own_background(bcm_sd, checkpoints, mvtec_bottle,
                                                                               tmp_path, monkeypatch, capsys):
    import torch

    good = mvtec_bottle / "train" / "good"
    names = [p.stem for p in sorted(good.iterdir())]
    masks = write_object_masks(tmp_path / "objects", names)
    calls = _spy_on_sampler(monkeypatch)
    out = tmp_path / "placed"
    assert _generate(bcm_sd, checkpoints[True], out, "--on-images", str(good), "--box", "20,20,16,16",
                     "--object-masks", str(masks), "--batch-size", "8") == 0
    entry = json.loads((out / "bottle/scratch/manifest.jsonl").read_text().splitlines()[0])
    assert entry["bcm"] is True and entry["guidance"] == 2.0
    torch.testing.assert_close(calls[0]["backgrounds"], _expected_backgrounds(bcm_sd, good, masks, range(len(names))),
                               atol=1e-5, rtol=1e-5)
    region = np.zeros((64, 64), bool)
    region[20:36, 20:36] = True
    for i, f in enumerate(sorted(good.iterdir())):
        assert np.array_equal(_pixels(out / f"bottle/scratch/image/{i}.png")[~region], _pixels(f)[~region])
    # without BCM weights the object masks would do nothing: refused, nothing written
    assert _generate(bcm_sd, checkpoints[False], tmp_path / "plain", "--on-images", str(good), "--box", "20,20,16,16",
                     "--object-masks", str(masks)) == 2
    assert "--u2net/--object-masks given but unused" in capsys.readouterr().err
    assert not (tmp_path / "plain").exists()


def test_bcm_backgrounds(bcm_sd, checkpoints, mvtec_bottle, tmp_path, monkeypatch):
    import torch

    good = mvtec_bottle / "train" / "good"
    names = [p.stem for p in sorted(good.iterdir())]
    masks = write_object_masks(tmp_path / "objects", names)  # the object: the centre square [16:48]
    calls = _spy_on_sampler(monkeypatch)
    assert _generate(bcm_sd, checkpoints[True], tmp_path / "o", "-n", "2", "--backgrounds", str(good),
                     "--object-masks", str(masks)) == 0
    entry = json.loads((tmp_path / "o/bottle/scratch/manifest.jsonl").read_text().splitlines()[0])
    assert entry["bcm"] is True and entry["guidance"] == 2.0
    # the sampler got the good images with the object cut out, unscaled latents, one per pair
    torch.testing.assert_close(calls[0]["backgrounds"], _expected_backgrounds(bcm_sd, good, masks, [0, 1]),
                               atol=1e-5, rtol=1e-5)
    with_bg = calls[0]["latents"][:2]

    def variant(name, change):  # the good images, changed in place by `change(array)`
        folder = tmp_path / name
        folder.mkdir()
        for f in sorted(good.iterdir()):
            a = _pixels(f).copy()
            change(a)
            Image.fromarray(a).save(folder / f.name)
        return folder

    def first_pair(name, *extra):
        calls.clear()
        out = tmp_path / name
        assert _generate(bcm_sd, checkpoints[True], out, "-n", "1", "--guidance", "2.0", *extra) == 0
        return calls[0]["latents"], out / "bottle/scratch"

    # no backgrounds at all (same checkpoint, seed and guidance): other images
    without, root = first_pair("none")
    assert calls[0]["backgrounds"] is None
    assert (without[0] - with_bg[0]).abs().max() > 1e-2, "the background must change the global image"
    assert not np.array_equal(_pixels(root / "image/0.png"), _pixels(tmp_path / "o/bottle/scratch/image/0.png"))

    def invert_outside(a):  # another background around the same object
        centre = a[16:48, 16:48].copy()
        a[:] = 255 - a
        a[16:48, 16:48] = centre

    outside = variant("outside", invert_outside)
    other, _ = first_pair("o_outside", "--backgrounds", str(outside), "--object-masks", str(masks))
    # measured: 1.6e-3 apart, against 3e-6 for identical backgrounds in batches of 2 and 1 (below)
    assert (other[0] - with_bg[0]).abs().max() > 2e-4, "a different background must change the global image"
    # only the object region changed: it is cut out, so the very same images
    inside = variant("inside", lambda a: a.__setitem__((slice(16, 48), slice(16, 48)), 255 - a[16:48, 16:48]))
    same, _ = first_pair("o_inside", "--backgrounds", str(inside), "--object-masks", str(masks))
    torch.testing.assert_close(same, with_bg, atol=5e-5, rtol=1e-5)  # batch of 2 vs 1: ~3e-6 apart
