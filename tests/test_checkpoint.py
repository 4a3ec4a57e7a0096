"""The DualAnoDiff checkpoint: round trip, metadata, and every refusal with a clear message."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dual_fixtures import dual_unet, pair_inputs
from dualanodiff_core import CheckpointError, load_checkpoint, load_dual_unet
from dualanodiff_core.checkpoint import (
    DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint,
)
from dualanodiff_core.diffusers_adapter import attention_modules, module_key
from tiny_models import tiny_unet


def _checkpoint(bcm=False, rank=4):
    dual = dual_unet(rank=rank, bcm=bcm)
    keys = {module_key(p): p for p in attention_modules(dual.unet)}
    comps = ["unet_lora", "saim"] + (["bcm"] if bcm else [])
    meta = make_metadata(rank, comps, provenance={"trained_by": "test"})
    return dual, DualAnoDiffCheckpoint(layers_to_tensors(dual.dual_layers, keys), meta)


def _rewrite(path, out, tensors=None, metadata=None):
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    t = load_file(str(path)) if tensors is None else tensors
    save_file(t, str(out), metadata=meta if metadata is None else metadata)
    return out


@pytest.mark.parametrize("bcm", [False, True])
def test_round_trip_fp32_is_exact_and_fp16_is_default(tmp_path, bcm):
    dual, ckpt = _checkpoint(bcm=bcm)
    x, ctx, bg = pair_inputs(2)
    background = bg if bcm else None
    with torch.no_grad():
        expected = dual(x, torch.tensor(10), ctx, background=background).sample
    p32 = save_checkpoint(tmp_path / "a.safetensors", ckpt, dtype=torch.float32)
    with torch.no_grad():
        got = load_dual_unet(tiny_unet(), p32)(x, torch.tensor(10), ctx, background=background).sample
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)

    p16 = save_checkpoint(tmp_path / "b.safetensors", ckpt)
    assert all(t.dtype == torch.float16 for t in load_file(str(p16)).values())
    loaded = load_checkpoint(p16)
    assert loaded.metadata["format"] == "dualanodiff" and loaded.metadata["format_version"] == "1"
    assert loaded.metadata["base_model"] == "sd15" and loaded.rank == 4
    assert loaded.prompts == {"global": "a vfx with sks", "anomaly": "sks", "negative": ""}
    assert loaded.provenance == {"trained_by": "test"}
    assert set(loaded.components) == {"unet_lora", "saim"} | ({"bcm"} if bcm else set())


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    _, ckpt = _checkpoint()
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"old")
    bad = DualAnoDiffCheckpoint(dict(ckpt.tensors), dict(ckpt.metadata, base_model="sdxl"))
    with pytest.raises(CheckpointError):
        save_checkpoint(target, bad)
    assert target.read_bytes() == b"old"
    save_checkpoint(target, ckpt)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


@pytest.fixture
def saved(tmp_path):
    _, ckpt = _checkpoint()
    return save_checkpoint(tmp_path / "good.safetensors", ckpt)


def test_not_a_dualanodiff_file(tmp_path, saved):
    plain = _rewrite(saved, tmp_path / "plain.safetensors", metadata={})
    with pytest.raises(CheckpointError, match="plain.safetensors is not a DualAnoDiff checkpoint"):
        load_checkpoint(plain)
    kohya = tmp_path / "kohya.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(kohya))
    with pytest.raises(CheckpointError, match="ordinary LoRA"):
        load_checkpoint(kohya)
    ref = tmp_path / "ref.safetensors"
    save_file({"unet.a.attn1.processor.to_q_lora.0.down.weight": torch.zeros(2, 2)}, str(ref))
    with pytest.raises(CheckpointError, match="dualanodiff convert"):
        load_checkpoint(ref)


def test_wrong_base_family(tmp_path, saved):
    meta = dict(load_checkpoint(saved).metadata, base_model="sdxl")
    with pytest.raises(CheckpointError, match="base model family 'sdxl'.*Stable Diffusion 1"):
        load_checkpoint(_rewrite(saved, tmp_path / "f.safetensors", metadata=meta))


def test_sdxl_width_is_detected_even_with_sd15_metadata(tmp_path, saved):
    t = load_file(str(saved))
    key = next(k for k in t if k.endswith("attn2.lora_k.down"))
    t[key] = torch.zeros(2, 4, 2048, dtype=torch.float16)
    with pytest.raises(CheckpointError, match="sdxl"):
        load_checkpoint(_rewrite(saved, tmp_path / "w.safetensors", tensors=t))


def test_missing_and_unexpected_keys(tmp_path, saved):
    t = load_file(str(saved))
    gone = next(k for k in t if k.endswith("saim.qkv.bias"))
    del t[gone]
    t["unet.mid_block.attentions.0.transformer_blocks.0.attn1.extra"] = torch.zeros(1, dtype=torch.float16)
    with pytest.raises(CheckpointError, match=r"missing keys .*saim\.qkv\.bias.*unexpected keys .*attn1\.extra"):
        load_checkpoint(_rewrite(saved, tmp_path / "k.safetensors", tensors=t))


def test_shape_mismatch_inside_file(tmp_path, saved):
    t = load_file(str(saved))
    key = next(k for k in t if k.endswith("saim.proj_in.weight"))
    t[key] = torch.zeros(5, 5, dtype=torch.float16)
    with pytest.raises(CheckpointError, match="inconsistent shapes.*saim.proj_in.weight"):
        load_checkpoint(_rewrite(saved, tmp_path / "s.safetensors", tensors=t))


def test_checkpoint_for_another_unet_is_refused(saved):
    from diffusers import UNet2DConditionModel
    from tiny_models import TINY_UNET_CONFIG

    wider = UNet2DConditionModel(**dict(TINY_UNET_CONFIG, block_out_channels=(48, 64)))
    with pytest.raises(CheckpointError, match="shapes that do not fit this UNet"):
        load_dual_unet(wider, saved)
    deeper = UNet2DConditionModel(**dict(TINY_UNET_CONFIG, down_block_types=("CrossAttnDownBlock2D",) * 2,
                                         up_block_types=("CrossAttnUpBlock2D",) * 2))
    with pytest.raises(CheckpointError, match="no weights for attention modules"):
        load_dual_unet(deeper, saved)


def test_nan_and_inf_are_refused(tmp_path, saved):
    t = load_file(str(saved))
    key = next(k for k in t if k.endswith("lora_v.up"))
    t[key][0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or Inf.*lora_v.up"):
        load_checkpoint(_rewrite(saved, tmp_path / "n.safetensors", tensors=t))


def test_truncated_file(tmp_path, saved):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(saved.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="cut.safetensors is not a readable .safetensors file.*truncated"):
        load_checkpoint(cut)


def test_newer_format_version(tmp_path, saved):
    meta = dict(load_checkpoint(saved).metadata, format_version="7")
    with pytest.raises(CheckpointError, match="format version 7, newer.*update the DualAnoDiff pack"):
        load_checkpoint(_rewrite(saved, tmp_path / "v.safetensors", metadata=meta))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_metadata_is_plain_strings(saved):
    meta = load_checkpoint(saved).metadata
    assert all(isinstance(v, str) for v in meta.values())
    json.loads(meta["provenance"])
