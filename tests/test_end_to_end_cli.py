"""train -> generate -> masks from the command line, as a user runs it, on a tiny model."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image


def _cli(*argv):
    out = subprocess.run([sys.executable, "-m", "dualanodiff_core.cli", *map(str, argv)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_train_then_generate_from_the_command_line(tiny_sd, mvtec_bottle, tmp_path):
    run = tmp_path / "run"
    stdout = _cli("train", "--mvtec", mvtec_bottle, "--defect", "scratch", "--base-model", tiny_sd, "--output-dir", run,
                  "--steps", "2", "--resolution", "64", "--rank", "4", "--pairs-per-step", "2", "--validate-every", "0")
    ckpt = run / "bottle_scratch.safetensors"
    assert f"wrote {ckpt}" in stdout
    _cli("generate", "--base-model", tiny_sd, "--checkpoint", ckpt, "--output-dir", tmp_path / "data", "--object",
         "bottle", "--defect", "scratch", "-n", "2", "--steps", "2", "--resolution", "64", "--scheduler", "ddim")
    root = tmp_path / "data" / "bottle" / "scratch"
    manifest = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert [m["index"] for m in manifest] == [0, 1]
    for m in manifest:
        mask = np.asarray(Image.open(tmp_path / "data" / m["files"]["mask"]))
        fg = np.asarray(Image.open(tmp_path / "data" / m["files"]["fg"]))
        assert mask.shape == fg.shape[:2] == (64, 64)
        assert m["mask_empty"] == (not (mask > 0).any())
