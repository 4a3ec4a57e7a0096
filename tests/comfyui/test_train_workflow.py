"""The shipped train-and-generate workflow (example_workflows/dualanodiff_train_and_generate.json, through its
API twin) executed by ComfyUI's executor on tiny models whose weights are inference tensors, as Load
Checkpoint leaves them: Training Pairs (a folder under input/) -> Train -> Paired KSampler on the trained
model and CLIP -> masks -> Save Dataset. Then: queued again, nothing trains; cancelled, it continues where
it stopped and ends with the weights of an uninterrupted run; bad input is refused before anything is written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import harness
from dualanodiff_core.formats.checkpoint import open_checkpoint
from tiny_models import tiny_text_encoder, tiny_unet, tiny_vae
from synthetic_data import write_defect_folder
from workflow_fixtures import pack_module, register_extra_harness_nodes, write_checkpoint

API = Path(__file__).resolve().parent / "workflow_api" / "dualanodiff_train_and_generate.json"
TRAIN = dict(steps=4, resolution=64, rank=4, pairs_per_step=2, learning_rate=1e-3, precision="fp32",
             save_precision="fp32")


@pytest.fixture(scope="module")
def models(comfy_root, tiny_sd):
    """MODEL, CLIP and VAE built in inference mode: their weights are inference tensors, as ComfyUI's."""
    with torch.inference_mode():
        return (harness.comfy_model_from_diffusers(tiny_unet()),
                harness.comfy_clip_from_transformers(tiny_text_encoder(), tiny_sd / "tokenizer"),
                harness.comfy_vae_from_diffusers(tiny_vae()))


def _graph(twin: dict, keys: dict, name: str) -> dict:
    graph = {"m": {"class_type": "HarnessModel", "inputs": {"key": keys["model"]}},
             "c": {"class_type": "HarnessClip", "inputs": {"key": keys["clip"]}},
             "v": {"class_type": "HarnessVae", "inputs": {"key": keys["vae"]}}}
    source = {("1", 0): ["m", 0], ("1", 1): ["c", 0], ("1", 2): ["v", 0]}
    for node_id, node in twin.items():
        if node_id == "1":
            continue
        inputs = {k: source.get(tuple(v), v) if isinstance(v, list) else v for k, v in node["inputs"].items()}
        graph[node_id] = {"class_type": node["class_type"], "inputs": inputs}
    graph["61"]["inputs"].update(TRAIN, name=name)
    graph["14"]["inputs"].update(width=64, height=64, batch_size=2)
    graph["20"]["inputs"].update(steps=3)
    graph["cap"] = {"class_type": "HarnessCaptureImage", "inputs": {"value": ["21", 0], "key": "global"}}
    graph["curve"] = {"class_type": "HarnessCaptureImage", "inputs": {"value": ["61", 2], "key": "curve"}}
    return graph


@pytest.fixture(scope="module")
def setup(pack, models):
    import folder_paths

    register_extra_harness_nodes()
    pack_module(pack, "nodes.model_folders").register_model_folders()
    twin = json.loads(API.read_text(encoding="utf-8"))
    write_defect_folder(Path(folder_paths.get_input_directory()) / twin["60"]["inputs"]["folder"])
    keys = {k: harness.register(m) for k, m in zip(("model", "clip", "vae"), models)}
    return twin, keys


@pytest.fixture
def step_counter(pack, monkeypatch):
    run_class = pack_module(pack, "nodes.training_run")._ComfyRun
    steps = []
    real = run_class.train_step

    def counted(self, step):
        steps.append(step)
        return real(self, step)

    monkeypatch.setattr(run_class, "train_step", counted)
    return steps


def test_workflow_trains_generates_and_saves_then_does_not_train_again(setup, step_counter):
    import folder_paths

    twin, keys = setup
    run = harness.run_graph(_graph(twin, keys, "wf"))
    assert step_counter == [0, 1, 2, 3]
    assert run.captured["global"].shape == (2, 64, 64, 3) and torch.isfinite(run.captured["global"]).all()
    assert run.captured["curve"].shape[0] == 1 and run.captured["curve"].shape[-1] == 3
    ckpt = open_checkpoint(folder_paths.get_full_path("dualanodiff", "wf.safetensors"))
    assert len(ckpt.provenance["losses"]) == 4 and ckpt.provenance["trainer"] == "ComfyUI DualAnoDiff Train"
    assert ckpt.has("text_encoder_lora") and ckpt.has("saim")
    saved = sorted((Path(folder_paths.get_output_directory()) / "dualanodiff").rglob("image/*.png"))
    assert len(saved) == 2
    harness.run_graph(_graph(twin, keys, "wf"))
    assert step_counter == [0, 1, 2, 3], "an unchanged graph queued again reuses the finished model"


def test_cancel_then_queue_again_continues_to_the_uninterrupted_weights(pack, setup, models, step_counter, monkeypatch):
    import comfy.model_management
    import folder_paths

    twin, keys = setup
    node = pack_module(pack, "nodes.training_nodes")
    pairs = node.DualAnoDiffTrainingPairs().collect(twin["60"]["inputs"]["folder"], "", "floor")[0]
    settings = {**twin["61"]["inputs"], **TRAIN}
    settings = {k: v for k, v in settings.items() if k not in ("model", "clip", "vae", "pairs", "name")}
    node.DualAnoDiffTrain().train(*models, pairs, "whole", **settings)
    import comfy.utils

    real_update = comfy.utils.ProgressBar.update_absolute

    def cancel_after_three_steps(bar, value, total=None, preview=None):
        real_update(bar, value, total, preview)
        if value == 3 and not getattr(cancel_after_three_steps, "done", False):
            cancel_after_three_steps.done = True  # what ComfyUI's Cancel does: the next check raises
            raise comfy.model_management.InterruptProcessingException()

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", cancel_after_three_steps)
    del step_counter[:]
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        node.DualAnoDiffTrain().train(*models, pairs, "cut", **settings)
    assert folder_paths.get_full_path("dualanodiff", "cut.safetensors") is None, "no checkpoint before the end"
    node.DualAnoDiffTrain().train(*models, pairs, "cut", **settings)
    assert step_counter == [0, 1, 2, 3], "the second queue continued at step 3"
    whole = open_checkpoint(folder_paths.get_full_path("dualanodiff", "whole.safetensors"))
    cut = open_checkpoint(folder_paths.get_full_path("dualanodiff", "cut.safetensors"))
    assert cut.provenance["losses"] == whole.provenance["losses"]
    for k, t in whole.tensors.items():
        assert torch.equal(cut.tensors[k], t), k
    state = Path(folder_paths.get_output_directory()) / "dualanodiff-training" / "cut"
    assert not state.exists(), "the finished run's resumable state is removed"


def _tensor_pairs(pack, mask_change=None):
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.random((2, 64, 64, 3)).astype(np.float32))
    masks = torch.zeros(2, 64, 64)
    masks[:, 10:20, 10:40] = 1
    if mask_change is not None:
        masks = mask_change(masks)
    return pack_module(pack, "nodes.training_nodes").DualAnoDiffTrainingPairs().collect("", "", "floor", images, masks)[0]


BAD = [
    ("name-leaves-folder", "name '../elsewhere' is not allowed as a folder name"),
    ("existing-name", "taken.safetensors already exists (made with other settings or by another trainer); turn on "
                      "'overwrite'"),
    ("empty-mask", "image 1: empty mask (no defect pixels); paint the defect in the mask"),
    ("mask-count", "2 images but 3 masks: give one mask per image"),
    ("not-sd15", "not Stable Diffusion 1.5"),
    ("pairs-and-folder", "either as a folder or as the images and masks inputs"),
]


@pytest.mark.parametrize("case, message", BAD, ids=[case for case, _ in BAD])
def test_bad_input_is_refused_and_nothing_is_written(pack, setup, models, case, message):
    import comfy.supported_models
    import folder_paths

    node = pack_module(pack, "nodes.training_nodes")
    twin, keys = setup
    settings = {k: v for k, v in {**twin["61"]["inputs"], **TRAIN}.items()
                if k not in ("model", "clip", "vae", "pairs", "name")}
    model, clip, vae = models
    name = "bad"
    folder = Path(folder_paths.get_folder_paths("dualanodiff")[0])
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    with pytest.raises(Exception) as raised:
        if case == "empty-mask":
            _tensor_pairs(pack, lambda m: torch.cat([m[:1], torch.zeros(1, 64, 64)]))
        elif case == "mask-count":
            _tensor_pairs(pack, lambda m: torch.cat([m, m[:1]]))
        elif case == "pairs-and-folder":
            node.DualAnoDiffTrainingPairs().collect("my_defects", "", "floor", torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8))
        else:
            pairs = _tensor_pairs(pack)
            if case == "name-leaves-folder":
                name = "../elsewhere"
            elif case == "existing-name":
                name = "taken"  # a checkpoint from dualanodiff train, say
                write_checkpoint(folder, "taken.safetensors")
                before.append("taken.safetensors")
            elif case == "not-sd15":
                model = model.clone()
                model.model = type(model.model).__new__(type(model.model))
                model.model.__dict__.update(models[0].model.__dict__)
                model.model.model_config = comfy.supported_models.SD20.__new__(comfy.supported_models.SD20)
            node.DualAnoDiffTrain().train(model, clip, vae, pairs, name, **settings)
    assert message in str(raised.value)
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else []) == sorted(before)
