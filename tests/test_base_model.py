"""Offline base-model loading: diffusers folders, single files, tokenizer lookup, other families refused."""
import json

import pytest
import torch
from safetensors.torch import save_file

from dualanodiff_core.formats.base_model import BaseModelError, find_tokenizer, load_base_model
from tiny_models import tiny_unet, write_tiny_tokenizer


@pytest.fixture
def tiny_folder(tiny_sd):
    return tiny_sd


def test_folder_loads_with_its_weights(tiny_folder):
    base = load_base_model(tiny_folder)
    reference = tiny_unet()
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        torch.testing.assert_close(base.unet(x, 10, c).sample, reference(x, 10, c).sample)
    assert base.tokenizer.model_max_length == 77
    assert base.scheduler_config["beta_schedule"] == "scaled_linear"
    assert not any(p.requires_grad for p in base.unet.parameters())


def test_sd2_and_sdxl_folders_are_refused(tiny_folder, tmp_path):
    import shutil

    for width, family in ((1024, "SD 2.x"), (2048, "SDXL")):
        other = tmp_path / f"w{width}"
        shutil.copytree(tiny_folder, other)
        cfg = json.loads((other / "unet" / "config.json").read_text())
        cfg["cross_attention_dim"] = width
        (other / "unet" / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(BaseModelError, match=f"is an {family} model"):
            load_base_model(other)


@pytest.mark.parametrize("key, family", [
    ("conditioner.embedders.0.transformer.text_model.embeddings.position_ids", "sdxl"),
    ("cond_stage_model.model.transformer.resblocks.0.ln_1.weight", "sd2"),
    ("first_stage_model.decoder.conv_in.weight", "not a Stable Diffusion 1.x checkpoint"),
])
def test_single_files_of_other_families_are_refused(tmp_path, key, family):
    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(1), "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(path))
    with pytest.raises(BaseModelError, match=f"model.safetensors is (a )?{family}.*Stable Diffusion 1.x"):
        load_base_model(path, tokenizer=tmp_path)


def test_unsafe_pickle_and_missing_files_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("never",))

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": Payload()}}, ckpt)
    write_tiny_tokenizer(tmp_path / "tok")
    with pytest.raises(BaseModelError, match="model.ckpt.*refused for safety"):
        load_base_model(ckpt, tokenizer=tmp_path / "tok")
    with pytest.raises(BaseModelError, match="not found"):
        load_base_model(tmp_path / "nope.safetensors")


def test_tokenizer_lookup_order(tmp_path, monkeypatch):
    model = tmp_path / "model.safetensors"
    comfy = tmp_path / "ComfyUI"
    write_tiny_tokenizer(comfy / "comfy" / "sd1_tokenizer")
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    with pytest.raises(BaseModelError, match="no CLIP tokenizer found: pass --tokenizer"):
        find_tokenizer(model)
    assert find_tokenizer(model, comfyui=comfy) == comfy / "comfy" / "sd1_tokenizer"
    monkeypatch.setenv("COMFYUI_PATH", str(comfy))
    assert find_tokenizer(model) == comfy / "comfy" / "sd1_tokenizer"
    with pytest.raises(BaseModelError, match="--tokenizer .* has neither vocab.json with merges.txt nor tokenizer.json"):
        find_tokenizer(model, tokenizer=tmp_path)


def test_tokenizer_json_alone_loads_with_the_same_ids(tiny_sd, tmp_path):
    """Current transformers' save_pretrained writes tokenizer.json (+ tokenizer_config.json) and no
    vocab.json/merges.txt: such a model folder must load, and tokenize exactly as the two-file form."""
    import shutil

    from dualanodiff_core.cli import main

    folder = tmp_path / "sd_tokenizer_json"
    shutil.copytree(tiny_sd, folder)
    reference = load_base_model(tiny_sd).tokenizer
    shutil.rmtree(folder / "tokenizer")
    reference.save_pretrained(folder / "tokenizer")
    assert not (folder / "tokenizer" / "vocab.json").exists() and (folder / "tokenizer" / "tokenizer.json").is_file()
    loaded = load_base_model(folder).tokenizer
    for prompt in ("a vfx with sks", "sks", "", "Héllo, WORLD!! 123 scratch-crack"):
        kw = dict(padding="max_length", max_length=77, truncation=True)
        assert loaded(prompt, **kw).input_ids == reference(prompt, **kw).input_ids
    assert find_tokenizer(folder) == folder / "tokenizer"
    assert find_tokenizer(folder, tokenizer=folder / "tokenizer") == folder / "tokenizer"
    # and the commands that read a base folder take it
    from dual_fixtures import random_layers
    from dualanodiff_core.formats.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint

    unet = tiny_unet()
    ckpt = save_checkpoint(tmp_path / "c.safetensors", DualAnoDiffCheckpoint(
        layers_to_tensors(random_layers(unet, rank=4)), make_metadata(4, ["unet_lora", "saim"])))
    assert main(["generate", "--base-model", str(folder), "--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "o"),
                 "--object", "a", "--defect", "b", "-n", "1", "--resolution", "64", "--steps", "2"]) == 0
    assert (tmp_path / "o" / "a" / "b" / "image" / "0.png").is_file()
