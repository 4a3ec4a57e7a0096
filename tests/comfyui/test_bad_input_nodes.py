"""Bad input at every node: the node raises DualAnoDiffError (FileNotFoundError for a missing model file)
whose message names the value and what to do, and nothing is written to ComfyUI's output folder."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import harness
from dual_fixtures import random_layers
from dualanodiff_core.runtime.diffusers_adapter import attention_modules
from dualanodiff_core.model.layers import layer_key
from reference_layout import reference_state_dict
from tiny_models import tiny_unet
from workflow_fixtures import pack_module, write_checkpoint


@pytest.fixture(scope="module")
def files(pack):
    import folder_paths

    pack_module(pack, "nodes.model_folders").register_model_folders()
    folder = Path(folder_paths.get_folder_paths("dualanodiff")[0])
    folder.mkdir(parents=True, exist_ok=True)
    good, _ = write_checkpoint(folder, "bad_input_good.safetensors")
    data = good.read_bytes()
    (folder / "bad_input_truncated.safetensors").write_bytes(data[: len(data) // 2])
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(1)}, str(folder / "bad_input_plain_lora.safetensors"))
    unet = tiny_unet(seed=0)
    layers = random_layers(unet, rank=4)
    ref = reference_state_dict({p: layers[layer_key(p)] for p in attention_modules(unet)})
    key = next(k for k in ref if ".to_v_lora.0.up." in k)
    save_file({**ref, key: torch.zeros(ref[key].shape[0], 3)}, str(folder / "pytorch_lora_weights.safetensors"))
    return pack


def _model():
    return harness.comfy_model_from_diffusers(tiny_unet(seed=0))


def _loader(pack, name):
    return lambda: pack_module(pack, "nodes.loader_nodes").DualAnoDiffLoader().load(_model(), name, 1, 1, 1, 1)


def _save(pack, **over):
    images = torch.rand(2, 16, 16, 3)
    kw = dict(images=images, masks=torch.zeros(2, 16, 16), anomaly_images=images, object_name="bottle",
              defect_name="scratch", layout="both", folder="bad_input")
    kw.update(over)
    return lambda: pack_module(pack, "nodes.image_nodes").DualAnoDiffSaveDataset().save(**kw)


def _latent(n):
    return {"samples": torch.zeros(n, 4, 4, 4)}


CASES = {
    "loader-truncated": (lambda p: _loader(p, "bad_input_truncated.safetensors"), r"not a readable .safetensors file"),
    "loader-plain-lora": (lambda p: _loader(p, "bad_input_plain_lora.safetensors"), r"not a DualAnoDiff checkpoint.*ordinary LoRA"),
    "loader-branch-shapes": (lambda p: _loader(p, "pytorch_lora_weights.safetensors"), r"to_v_lora\.\{0,1\}\.up\.weight differ in shape"),
    "loader-missing-file": (lambda p: _loader(p, "gone.safetensors"), r"gone.safetensors: not found in the 'dualanodiff' model folder"),
    "sampler-plain-model": (lambda p: lambda: pack_module(p, "nodes.paired_sampling").paired_ksample(
        _model(), 0, 1, 1.0, "euler", "normal", harness.conditioning(torch.zeros(1, 2, 32)),
        harness.conditioning(torch.zeros(1, 2, 32)), harness.conditioning(torch.zeros(1, 2, 32)), _latent(1)),
        r"needs a MODEL from 'DualAnoDiff Loader'"),
    "split-odd-batch": (lambda p: lambda: pack_module(p, "nodes.sampler_nodes").DualAnoDiffSplitLatents().split(_latent(3)),
                        r"3 images, an odd number"),
    "pair-latents-shapes": (lambda p: lambda: pack_module(p, "nodes.sampler_nodes").DualAnoDiffPairLatents().pair(
        _latent(2), {"samples": torch.zeros(2, 4, 8, 8)}), r"\(2, 4, 4, 4\).*\(2, 4, 8, 8\)"),
    "pair-latents-counts": (lambda p: lambda: pack_module(p, "nodes.sampler_nodes").DualAnoDiffPairLatents().pair(
        _latent(2), _latent(3)), r"2.*3"),
    "save-name-escapes": (lambda p: _save(p, object_name="../escape"), r"'../escape' is not allowed as a folder name"),
    "save-folder-escapes": (lambda p: _save(p, folder="../../outside"), r"not allowed as a folder name|leads outside"),
    "save-unequal-counts": (lambda p: _save(p, masks=torch.zeros(3, 16, 16)), r"2 global images, 2 anomaly parts and 3 masks"),
    "save-good-defect": (lambda p: _save(p, defect_name="good"), r"'good' is MVTec's name for normal images"),
    "mask-wrong-channels": (lambda p: lambda: pack_module(p, "nodes.image_nodes").DualAnoDiffExtractMask().extract(
        torch.zeros(1, 8, 8, 2), "threshold", 0.1, 0, 0.0), r"expected 3 colour channels"),
}


def _output_snapshot() -> dict:
    import folder_paths

    root = Path(folder_paths.get_output_directory())
    return {str(p): p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")}


@pytest.mark.parametrize("case", list(CASES))
def test_nodes_refuse_bad_input_cleanly(files, case):
    DualAnoDiffError = pack_module(files, "dualanodiff_core.errors").DualAnoDiffError  # the pack's own class
    make, message = CASES[case]
    call = make(files)
    before = _output_snapshot()
    with pytest.raises((DualAnoDiffError, FileNotFoundError), match=message):
        call()
    assert _output_snapshot() == before, "a refused node must write nothing"


def test_loader_clip_output_without_clip_input_says_what_to_connect(files):
    """Stock CLIPTextEncode on the Loader's CLIP output with no CLIP input: our message, titled with the
    pack's name (not the checkout folder's module path), instead of "checkpoint has no valid clip"."""
    from workflow_fixtures import register_extra_harness_nodes

    register_extra_harness_nodes()
    graph = {
        "1": {"class_type": "HarnessModel", "inputs": {"key": harness.register(_model())}},
        "3": {"class_type": "DualAnoDiffLoader", "inputs": {
            "model": ["1", 0], "checkpoint": "bad_input_good.safetensors", "strength_global": 1.0,
            "strength_anomaly": 1.0, "strength_saim": 1.0, "strength_clip": 1.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["3", 1], "text": "a photo"}},
        "5": {"class_type": "HarnessCaptureConditioning", "inputs": {"value": ["4", 0], "key": "c"}},
    }
    with pytest.raises(AssertionError) as failure:
        harness.run_graph(graph)
    text = str(failure.value)
    assert "CLIPTextEncode" in text and "dualanodiff.DualAnoDiffError: the DualAnoDiff Loader's CLIP output is empty" in text
    assert "connect the CLIP of Load Checkpoint to the Loader's 'clip' input" in text
    assert "does not contain a valid clip" not in text
