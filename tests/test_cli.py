"""The command line: every option documented; export-lora writes kohya files and never overwrites."""
import argparse
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from dual_fixtures import dual_unet
from dualanodiff_core.formats.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint
from dualanodiff_core.cli import build_parser, main
from dualanodiff_core.runtime.diffusers_adapter import attention_modules
from dualanodiff_core.model.layers import layer_key


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["demo", "train", "generate", "convert", "export-lora", "evaluate"])
def test_every_option_has_help(command):
    sub = _subparsers(build_parser())[command]
    assert sub.description
    for action in sub._actions:
        assert action.help and len(action.help) > 10, f"{command} {action.option_strings or action.dest} lacks help"


def test_console_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "dualanodiff_core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "convert" in out.stdout and "export-lora" in out.stdout


@pytest.fixture
def checkpoint(tmp_path):
    dual = dual_unet(rank=4)
    te = {"text_model.encoder.layers.0.self_attn.q_proj": (torch.randn(4, 32), torch.randn(32, 4))}
    tensors = layers_to_tensors(dual.dual_layers)
    tensors.update({f"text_encoder.{k}.down": d for k, (d, u) in te.items()})
    tensors.update({f"text_encoder.{k}.up": u for k, (d, u) in te.items()})
    ckpt = DualAnoDiffCheckpoint(tensors, make_metadata(4, ["unet_lora", "saim", "text_encoder_lora"]))
    return save_checkpoint(tmp_path / "scratch.safetensors", ckpt), dual


def test_export_lora_writes_kohya_files(tmp_path, checkpoint):
    path, dual = checkpoint
    out = tmp_path / "loras"
    assert main(["export-lora", str(path), "--output-dir", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["scratch_anomaly.safetensors", "scratch_global.safetensors", "scratch_text_encoder.safetensors"]
    with safe_open(str(out / "scratch_anomaly.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        path0 = next(iter(attention_modules(dual.unet)))
        prefix = "lora_unet_" + path0.replace(".", "_")
        up = f.get_tensor(f"{prefix}_to_out_0.lora_up.weight")
        assert f.get_tensor(f"{prefix}_to_q.alpha").item() == 4.0
    expected_up = dual.dual_layers[layer_key(path0)].lora_out.up[1].half()
    torch.testing.assert_close(up, expected_up)
    assert len(keys) == 3 * 4 * len(attention_modules(dual.unet))
    with safe_open(str(out / "scratch_text_encoder.safetensors"), framework="pt") as f:
        assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in f.keys()


def test_export_lora_refuses_to_overwrite(tmp_path, checkpoint, capsys):
    path, _ = checkpoint
    victim = tmp_path / "scratch_global.safetensors"
    victim.write_bytes(b"keep me")
    assert main(["export-lora", str(path)]) == 2
    assert "would overwrite" in capsys.readouterr().err
    assert victim.read_bytes() == b"keep me"
    assert not (tmp_path / "scratch_anomaly.safetensors").exists(), "nothing is written when one file is in the way"


def test_errors_are_one_line_messages_not_tracebacks(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.bin")]) == 2
    err = capsys.readouterr().err
    assert "missing.bin" in err and "Traceback" not in err
