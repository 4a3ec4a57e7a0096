"""The DualAnoDiff Train node trains on ComfyUI's own MODEL, CLIP and VAE exactly as `dualanodiff train` trains
on the same weights: the same loss per step and the same final weights (fp32, CPU)."""
from __future__ import annotations

import json

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
