"""The DualAnoDiff Train node trains on ComfyUI's own MODEL, CLIP and VAE exactly as `dualanodiff train` trains
on the same weights: the same loss per step and the same final weights (fp32, CPU)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

import harness
from dualanodiff_core.cli import main
from dualanodiff_core.formats.checkpoint import open_checkpoint
from tiny_models import tiny_text_encoder, tiny_unet, tiny_vae
from workflow_fixtures import pack_module

STEPS = 20
SETTINGS = dict(steps=STEPS, learning_rate=1e-3, rank=4, pairs_per_step=2, resolution=64, seed=3,
                text_encoder_lora=True, saim=True, prompt_global="a vfx with sks", prompt_anomaly="sks",
                gradient_checkpointing=False, precision="fp32", save_precision="fp32", overwrite=False)


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Three 64 px defect images (a bright bar on a textured square) with their masks."""
    root = tmp_path_factory.mktemp("shots")
    rng = np.random.default_rng(4)
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    for i in range(3):
        image = rng.integers(40, 90, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        y = 12 + 14 * i
        mask[y:y + 4, 10:54] = 255
        image[mask > 0] = (230, 60, 200)
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def comfy_models(comfy_root, tiny_sd):
    """ComfyUI's MODEL, CLIP and VAE holding the weights of the tiny model folder the CLI trains on."""
    return (harness.comfy_model_from_diffusers(tiny_unet()),
            harness.comfy_clip_from_transformers(tiny_text_encoder(), tiny_sd / "tokenizer"),
            harness.comfy_vae_from_diffusers(tiny_vae()))


def _node_train(pack, models, pairs, name, **changes):
    node = pack_module(pack, "nodes.training_nodes").DualAnoDiffTrain()
    model, clip, vae = models
    return node.train(model, clip, vae, pairs, name, **{**SETTINGS, **changes})


def _pairs(pack, shots):
    node = pack_module(pack, "nodes.training_nodes").DualAnoDiffTrainingPairs()
    return node.collect(str(shots), "", "floor")


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_node_equals_the_cli_step_for_step(pack, shots, comfy_models, tiny_sd, tmp_path, checkpointing, monkeypatch):
    import folder_paths
    import torch.utils.checkpoint

    recomputed = []
    real_checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda fn, *a, **k: recomputed.append(fn) or real_checkpoint(fn, *a, **k))
    pairs, preview = _pairs(pack, shots)
    assert preview.shape == (3, 64, 64, 3)
    name = f"equal_{checkpointing}"
    model_out, clip_out, curve, filename = _node_train(pack, comfy_models, pairs, name,
                                                       gradient_checkpointing=checkpointing)
    assert filename == f"{name}.safetensors" and curve.shape[0] == 1 and curve.shape[-1] == 3
    node_ckpt = open_checkpoint(folder_paths.get_full_path("dualanodiff", filename))
    # every residual and transformer layer of the UNet is recomputed once per step (12 in the tiny one)
    layers = pack_module(pack, "nodes.comfy_training").checkpointed_layers(comfy_models[0])
    assert len(layers) == 12 and len(recomputed) == (len(layers) * STEPS if checkpointing else 0), len(recomputed)
    recomputed.clear()

    assert main(["train", "--base-model", str(tiny_sd), "--images", str(shots / "images"), "--masks",
                 str(shots / "masks"), "--resolution", "64", "--steps", str(STEPS), "--rank", "4", "--pairs-per-step",
                 "2", "--lr", "1e-3", "--seed", "3", "--save-dtype", "fp32", "--checkpoint-every", "0",
                 "--validate-every", "0", "--output-dir", str(tmp_path / "cli"), "--name", "cli",
                 *(["--gradient-checkpointing"] if checkpointing else [])]) == 0
    cli_ckpt = open_checkpoint(tmp_path / "cli" / "cli.safetensors")

    node_losses, cli_losses = node_ckpt.provenance["losses"], cli_ckpt.provenance["losses"]
    assert len(node_losses) == len(cli_losses) == STEPS
    np.testing.assert_allclose(node_losses, cli_losses, rtol=1e-5)
    assert set(node_ckpt.tensors) == set(cli_ckpt.tensors)
    assert any(k.startswith("text_encoder.") for k in cli_ckpt.tensors)
    worst = max(((node_ckpt.tensors[k] - cli_ckpt.tensors[k]).norm() / cli_ckpt.tensors[k].norm().clamp_min(1e-12)).item()
                for k in cli_ckpt.tensors)
    print(f"loss max relative difference {max(abs(a - b) / abs(b) for a, b in zip(node_losses, cli_losses)):.2e}, "
          f"weights worst relative difference {worst:.2e}")
    assert worst < 1e-5, worst
    # training moved the weights (the up projections start at zero)
    assert any(k.endswith(".up") and cli_ckpt.tensors[k].abs().max() > 1e-4 for k in cli_ckpt.tensors)


def test_node_trains_bcm_as_the_cli_does(pack, shots, comfy_models, tiny_sd, tmp_path):
    """BCM with object masks: the node's MASK input and the CLI's --object-masks folder give the same run."""
    import folder_paths

    objects = tmp_path / "objects"
    objects.mkdir()
    masks = []
    for i in range(3):
        m = np.zeros((64, 64), np.uint8)
        m[8 + 4 * i:56, 6:58 - 4 * i] = 255
        Image.fromarray(m).save(objects / f"{i}.png")
        masks.append(torch.from_numpy(m.astype(np.float32) / 255))
    pairs, _ = _pairs(pack, shots)
    *_, filename = _node_train(pack, comfy_models, pairs, "trained_bcm", bcm_object_masks=torch.stack(masks))
    node_ckpt = open_checkpoint(folder_paths.get_full_path("dualanodiff", filename))
    assert main(["train", "--base-model", str(tiny_sd), "--images", str(shots / "images"), "--masks",
                 str(shots / "masks"), "--resolution", "64", "--steps", str(STEPS), "--rank", "4", "--pairs-per-step",
                 "2", "--lr", "1e-3", "--seed", "3", "--save-dtype", "fp32", "--checkpoint-every", "0",
                 "--validate-every", "0", "--output-dir", str(tmp_path / "cli"), "--name", "cli",
                 "--bcm", "--object-masks", str(objects)]) == 0
    cli_ckpt = open_checkpoint(tmp_path / "cli" / "cli.safetensors")
    assert any("bcm" in k for k in cli_ckpt.tensors)
    assert set(node_ckpt.tensors) == set(cli_ckpt.tensors)
    np.testing.assert_allclose(node_ckpt.provenance["losses"], cli_ckpt.provenance["losses"], rtol=1e-5)
    worst = max(((node_ckpt.tensors[k] - cli_ckpt.tensors[k]).norm() / cli_ckpt.tensors[k].norm().clamp_min(1e-12)).item()
                for k in cli_ckpt.tensors)
    print(f"BCM: weights worst relative difference {worst:.2e}")
    # the triples' larger attention batches round differently in the two runtimes: measured 1.5e-5 at worst, on
    # the smallest tensors (the cross-attention query/key LoRA up projections of the first down block)
    assert worst < 3e-5, worst


def test_bcm_object_masks_must_fit_the_pairs(pack, shots, comfy_models):
    pairs, _ = _pairs(pack, shots)
    with pytest.raises(Exception, match=r"bcm_object_masks holds 2 masks for 3 training pairs"):
        _node_train(pack, comfy_models, pairs, "bcm_bad", bcm_object_masks=torch.ones(2, 64, 64))
    with pytest.raises(Exception, match=r"bcm_object_masks are 32x32 px but 0.png is 64x64"):
        _node_train(pack, comfy_models, pairs, "bcm_bad", bcm_object_masks=torch.ones(3, 32, 32))


def test_bcm_u2net_finds_the_objects_the_cli_finds(pack, shots, tmp_path):
    """With bcm_u2net the node's object masks are those `dualanodiff train --bcm --u2net` computes."""
    from types import SimpleNamespace

    from dualanodiff_core.masks.u2net import U2NETP, load_u2net
    from dualanodiff_core.training.trainer import bcm_object_masks

    torch.manual_seed(0)
    torch.save(U2NETP().state_dict(), tmp_path / "u2netp.pth")
    pairs, _ = _pairs(pack, shots)
    pairs.files, pairs.names = pairs.files[:1], pairs.names[:1]  # one pair: U-2-Net works at 320 px, slow on a CPU
    node_masks = pack_module(pack, "nodes.training_pairs").object_masks(
        pairs, 64, "bilinear", u2net=load_u2net(str(tmp_path / "u2netp.pth")))
    args = SimpleNamespace(object_masks=None, u2net=str(tmp_path / "u2netp.pth"), resolution=64, resample="bilinear")
    cli_masks = bcm_object_masks(args, pairs.files)
    assert len(node_masks) == len(cli_masks) == 1 and node_masks[0].shape == (64, 64)
    for a, b in zip(node_masks, cli_masks):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=0, atol=0)


def test_training_attention_is_sdpa_and_leaves_other_packs_sites(pack, comfy_models):
    """The training clone attends with PyTorch's scaled dot-product attention (as dualanodiff train does) on
    every site, except where another pack's replace patch already holds it."""
    training = pack_module(pack, "nodes.comfy_training")
    sites = pack_module(pack, "nodes.attention_sites").attention_sites(comfy_models[0])
    model = comfy_models[0].clone()

    def theirs(q, k, v, extra_options):
        return q

    model.set_model_attn1_replace(theirs, *sites[0].block)
    training.with_training_attention(model, sites)
    replaced = model.model_options["transformer_options"]["patches_replace"]
    assert replaced["attn1"][sites[0].block] is theirs
    ours = [replaced[s.attention][s.block] for s in sites[1:]]
    assert len(ours) == len(sites) - 1 and all(isinstance(p, training._TrainingAttention) for p in ours)
    assert "patches_replace" not in comfy_models[0].model_options["transformer_options"]  # the input MODEL untouched

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 12, generator=g) for n in (16, 7, 7))
    heads = 3
    split = [t.view(2, -1, heads, 4).transpose(1, 2) for t in (q, k, v)]
    weights = torch.softmax(split[0] @ split[1].transpose(-1, -2) / 2.0, dim=-1)  # 1/sqrt(head width 4)
    expected = (weights @ split[2]).transpose(1, 2).reshape(2, 16, 12)
    torch.testing.assert_close(ours[0](q, k, v, {"n_heads": heads}), expected, rtol=1e-5, atol=1e-6)
