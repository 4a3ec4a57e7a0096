"""Reference checkpoints (key layout of reference-method.md section 7) convert and reproduce the spec."""

import pytest
import torch
from safetensors.torch import save_file

from dual_fixtures import pair_inputs, random_layers
from dualanodiff_core import CheckpointError, load_dual_unet
from dualanodiff_core.formats.checkpoint import load_checkpoint
from dualanodiff_core.cli import main
from dualanodiff_core.runtime.diffusers_adapter import attention_modules
from dualanodiff_core.model.layers import layer_key
from dualanodiff_core.formats.reference_import import convert_reference
from reference_layout import reference_state_dict
from spec_reference import spec_forward
from tiny_models import tiny_unet

T = torch.tensor(321)


def _write(sd, path):
    if path.suffix == ".bin":
        torch.save(sd, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
@pytest.mark.parametrize("bcm", [False, True])
def test_reference_file_converts_and_reproduces_the_spec(tmp_path, suffix, bcm):
    unet = tiny_unet()
    layers = random_layers(unet, rank=4, bcm=bcm, seed=5)
    by_path = {p: layers[layer_key(p)] for p in attention_modules(unet)}
    x, ctx, bg = pair_inputs(3)
    background = bg if bcm else None
    expected = spec_forward(unet, by_path, x, T, ctx, background=background)

    ref = _write(reference_state_dict(by_path, bcm=bcm), tmp_path / f"pytorch_lora_weights{suffix}")
    out = tmp_path / "converted.safetensors"
    assert main(["convert", str(ref), "-o", str(out), "--dtype", "fp32"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.has("saim") and ckpt.has("bcm") == bcm and ckpt.rank == 4
    assert ckpt.provenance["converted_from"] == str(ref)
    dual = load_dual_unet(tiny_unet(), ckpt)
    with torch.no_grad():
        got = dual(x, T, ctx, background=background).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_text_encoder_lora_is_imported_and_applied(tmp_path):
    from dualanodiff_core.formats.text_encoder_lora import clip_attention_linears
    from tiny_models import tiny_text_encoder

    unet, te = tiny_unet(), tiny_text_encoder()
    layers = random_layers(unet)
    gen = torch.Generator().manual_seed(9)
    te_lora = {name: (torch.randn(4, 32, generator=gen) * 0.1, torch.randn(32, 4, generator=gen) * 0.1)
               for name in clip_attention_linears(te)}
    sd = reference_state_dict({p: layers[layer_key(p)] for p in attention_modules(unet)}, te_lora=te_lora)
    ckpt = convert_reference(_write(sd, tmp_path / "pytorch_lora_weights.safetensors"))
    assert ckpt.has("text_encoder_lora")

    ids = torch.randint(0, 1000, (2, 77), generator=gen)
    plain = te(ids).last_hidden_state
    merged = tiny_text_encoder()  # the spec: W + up @ down on q/k/v/out_proj of every layer
    with torch.no_grad():
        for name, (down, up) in te_lora.items():
            merged.get_submodule(clip_attention_linears(merged)[name]).weight += up @ down
        expected = merged(ids).last_hidden_state
    load_dual_unet(unet, ckpt, text_encoder=te)
    with torch.no_grad():
        got = te(ids).last_hidden_state
    assert not torch.allclose(plain, expected)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_corrupt_reference_files_are_refused(tmp_path):
    unet = tiny_unet()
    layers = random_layers(unet)
    sd = reference_state_dict({p: layers[layer_key(p)] for p in attention_modules(unet)})
    good = _write(sd, tmp_path / "pytorch_lora_weights.safetensors")
    truncated = tmp_path / "truncated" / "pytorch_lora_weights.safetensors"
    truncated.parent.mkdir()
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        convert_reference(truncated)

    bin_good = _write(sd, tmp_path / "pytorch_lora_weights.bin")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(bin_good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.bin"):
        convert_reference(cut)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_objects_is_refused(tmp_path, capsys):
    path = tmp_path / "pytorch_lora_weights.bin"
    torch.save({"unet.x.processor.to_q_lora.0.down.weight": torch.zeros(1), "evil": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"holds Python objects other than tensors \(print\) and was refused for safety"):
        convert_reference(path)
    assert "must never run" not in capsys.readouterr().out


def test_unknown_and_half_keys_are_reported(tmp_path):
    unet = tiny_unet()
    layers = random_layers(unet)
    sd = reference_state_dict({p: layers[layer_key(p)] for p in attention_modules(unet)})
    odd = dict(sd, **{"unet.mid_block.foo.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not in the reference layout.*mid_block.foo"):
        convert_reference(_write(odd, tmp_path / "a.safetensors"))
    half = {k: v for k, v in sd.items() if "to_q_lora.1." not in k}
    with pytest.raises(CheckpointError, match="only one branch"):
        convert_reference(_write(half, tmp_path / "b.safetensors"))


def test_convert_refuses_to_overwrite(tmp_path, capsys):
    unet = tiny_unet()
    layers = random_layers(unet)
    ref = _write(reference_state_dict({p: layers[layer_key(p)] for p in attention_modules(unet)}),
                 tmp_path / "pytorch_lora_weights.safetensors")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    assert main(["convert", str(ref), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
