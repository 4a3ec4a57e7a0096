"""The DualAnoDiff checkpoint: round trip, metadata, and every refusal with a clear message."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from dual_fixtures import dual_unet, pair_inputs
from dualanodiff_core import CheckpointError, load_checkpoint, load_dual_unet
from dualanodiff_core.formats.checkpoint import (
    DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint,
)
from tiny_models import tiny_unet


def _checkpoint(bcm=False, rank=4):
    dual = dual_unet(rank=rank, bcm=bcm)
    comps = ["unet_lora", "saim"] + (["bcm"] if bcm else [])
    meta = make_metadata(rank, comps, provenance={"trained_by": "test"})
    return dual, DualAnoDiffCheckpoint(layers_to_tensors(dual.dual_layers), meta)


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


def test_missing_keys_alone_and_unexpected_keys_alone(tmp_path, saved):
    t = load_file(str(saved))
    del t[next(k for k in t if k.endswith("lora_k.up"))]
    with pytest.raises(CheckpointError, match=r"missing keys .*lora_k\.up") as info:
        load_checkpoint(_rewrite(saved, tmp_path / "a.safetensors", tensors=t))
    assert "unexpected keys" not in str(info.value)
    # well-formed DualAnoDiff keys the listed components do not have: BCM weights in a file without "bcm"
    t = load_file(str(saved))
    attn1 = next(k for k in t if k.endswith("attn1.lora_q.down")).rsplit(".lora_q.down", 1)[0]
    t[f"{attn1}.bcm.gamma"] = torch.zeros(1, dtype=torch.float16)
    with pytest.raises(CheckpointError, match=r"unexpected keys .*attn1\.bcm\.gamma") as info:
        load_checkpoint(_rewrite(saved, tmp_path / "b.safetensors", tensors=t))
    assert "missing keys" not in str(info.value)


def test_text_encoder_lora_round_trip(tmp_path):
    _, ckpt = _checkpoint()
    gen = torch.Generator().manual_seed(3)
    te = {}
    for n in range(2):
        for proj in ("q_proj", "out_proj"):
            module = f"text_model.encoder.layers.{n}.self_attn.{proj}"
            te[module] = (torch.randn(4, 32, generator=gen), torch.randn(32, 4, generator=gen))
    tensors = dict(ckpt.tensors)
    for module, (down, up) in te.items():
        tensors[f"text_encoder.{module}.down"], tensors[f"text_encoder.{module}.up"] = down, up
    meta = make_metadata(4, ["unet_lora", "saim", "text_encoder_lora"])
    loaded = load_checkpoint(save_checkpoint(tmp_path / "te.safetensors", DualAnoDiffCheckpoint(tensors, meta),
                                             dtype=torch.float32))
    assert loaded.has("text_encoder_lora")
    got = loaded.text_encoder_lora()
    assert set(got) == set(te)
    for module, (down, up) in te.items():
        assert torch.equal(got[module][0], down) and torch.equal(got[module][1], up)
    module = "text_model.encoder.layers.1.self_attn.out_proj"
    tensors[f"text_encoder.{module}.up"] = torch.zeros(32, 3)  # rank 3 against a rank-4 down
    with pytest.raises(CheckpointError, match=f"inconsistent shapes.*text_encoder.{module}: down"):
        save_checkpoint(tmp_path / "bad.safetensors", DualAnoDiffCheckpoint(tensors, meta))


def test_shape_mismatch_inside_file(tmp_path, saved):
    t = load_file(str(saved))
    key = next(k for k in t if k.endswith("saim.proj_in.weight"))
    t[key] = torch.zeros(5, 5, dtype=torch.float16)
    with pytest.raises(CheckpointError, match="inconsistent shapes.*saim.proj_in.weight"):
        load_checkpoint(_rewrite(saved, tmp_path / "s.safetensors", tensors=t))


@pytest.mark.parametrize("suffix, shape, bcm", [
    ("lora_q.down", lambda s: (s[0], s[1] - 1, s[2]), False),   # rank 3 in a rank-4 file
    ("lora_v.up", lambda s: (s[0], s[1], s[2] + 1), False),
    ("bcm.mlp_out.weight", lambda s: (s[0], s[1] + 1), True),   # its MLP no longer fits mlp_in
], ids=["lora-down-rank", "lora-up-rank", "bcm-mlp"])
def test_each_part_has_its_shapes_checked(tmp_path, suffix, shape, bcm):
    _, ckpt = _checkpoint(bcm=bcm)
    tensors = dict(ckpt.tensors)
    key = next(k for k in tensors if k.endswith(suffix))
    tensors[key] = torch.zeros(shape(tuple(tensors[key].shape)))
    with pytest.raises(CheckpointError, match=f"inconsistent shapes.*{re.escape(key[len('unet.'):].rsplit('.', 1)[0])}"):
        save_checkpoint(tmp_path / "x.safetensors", DualAnoDiffCheckpoint(tensors, ckpt.metadata))


def test_checkpoint_for_another_unet_is_refused(saved):
    from diffusers import UNet2DConditionModel
    from tiny_models import TINY_UNET_CONFIG

    wider = UNet2DConditionModel(**dict(TINY_UNET_CONFIG, block_out_channels=(48, 64)))
    with pytest.raises(CheckpointError, match="shapes that do not fit this UNet"):
        load_dual_unet(wider, saved)
    deeper = UNet2DConditionModel(**dict(TINY_UNET_CONFIG, down_block_types=("CrossAttnDownBlock2D",) * 2,
                                         up_block_types=("CrossAttnUpBlock2D",) * 2))
    with pytest.raises(CheckpointError, match="no weights for attention modules") as info:
        load_dual_unet(deeper, saved)
    assert "the UNet does not have" not in str(info.value)  # the file has no extra modules
    shallower = UNet2DConditionModel(**dict(TINY_UNET_CONFIG, down_block_types=("DownBlock2D",) * 2,
                                            up_block_types=("UpBlock2D",) * 2))  # only the mid block's
    with pytest.raises(CheckpointError, match="weights for attention modules the UNet does not have: down_blocks") as info:
        load_dual_unet(shallower, saved)
    assert "no weights for" not in str(info.value)


@pytest.mark.parametrize("change, message", [
    ({"format_version": "one"}, "format_version 'one' is not a number"),
    ({"components": "unet_lora,saim,lcm"}, "lists unknown components lcm"),
    ({"rank": "four"}, "metadata 'rank' is missing or not a number"),
    ({"rank": None}, "metadata 'rank' is missing or not a number"),
    ({"components": "unet_lora,saim,text_encoder_lora"}, "lists a text-encoder LoRA but holds no text_encoder.* weights"),
], ids=["version", "components", "rank", "no-rank", "no-te-weights"])
def test_bad_metadata_is_refused(tmp_path, saved, change, message):
    meta = dict(load_checkpoint(saved).metadata)
    for key, value in change.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(_rewrite(saved, tmp_path / "m.safetensors", metadata=meta))


def test_text_encoder_lora_alone_is_refused(tmp_path, saved):
    prefix = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    t = {f"{prefix}.down": torch.zeros(4, 32), f"{prefix}.up": torch.zeros(32, 4)}
    meta = dict(load_checkpoint(saved).metadata, components="text_encoder_lora")
    with pytest.raises(CheckpointError, match="holds no UNet attention weights"):
        load_checkpoint(_rewrite(saved, tmp_path / "te.safetensors", tensors=t, metadata=meta))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "+inf", "-inf"])
def test_nan_and_inf_are_refused(tmp_path, saved, bad):
    t = load_file(str(saved))
    key = next(k for k in t if k.endswith("lora_v.up"))
    t[key][0, 0, 0] = bad
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
    # the whole header, value by value (docs/checkpoint-format.md), for _checkpoint(): rank 4, no BCM, fp16
    assert meta == {
        "format": "dualanodiff", "format_version": "1", "base_model": "sd15", "rank": "4",
        "components": "unet_lora,saim", "prompt_global": "a vfx with sks", "prompt_anomaly": "sks",
        "prompt_negative": "", "provenance": '{"trained_by": "test"}', "dtype": "float16",
    }
    assert json.loads(meta["provenance"]) == {"trained_by": "test"}


def test_schema_is_the_layers_own(tmp_path):
    """The checkpoint's expected keys and shapes come from the modules: a parameter added to the
    layers is expected in every file at once, with no list to update."""
    from dualanodiff_core.model import layers as layers_module
    from dualanodiff_core.runtime.diffusers_adapter import attention_dims

    dual, ckpt = _checkpoint(bcm=True)
    for dims in attention_dims(dual.unet):
        expected = layers_module.expected_tensors(dims, 4, saim=True, bcm=True)
        in_file = {k: tuple(v.shape) for k, v in ckpt.layer_state_dict(dims.path).items()}
        assert expected == in_file
        assert ("bcm.gamma" in expected) == dims.self_attention

    original = layers_module.SAIM.__init__

    def with_extra(self, channels):
        original(self, channels)
        self.extra = torch.nn.Parameter(torch.zeros(channels))

    layers_module.SAIM.__init__ = with_extra
    try:
        with pytest.raises(CheckpointError, match=r"missing keys .*saim\.extra"):
            save_checkpoint(tmp_path / "x.safetensors", ckpt)
    finally:
        layers_module.SAIM.__init__ = original
    assert not (tmp_path / "x.safetensors").exists()
