"""Bad input at every entry point: exit code 2 (or DualAnoDiffError from the Python API), a one-line message
naming the value and what to do, no traceback, and nothing on disk created or changed.

Each case is one row of the table below: an argv with placeholders for the files the fixture writes.
"""
import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dual_fixtures import random_layers
from dualanodiff_core.formats.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, open_checkpoint, save_checkpoint
from dualanodiff_core.cli import build_parser, main
from dualanodiff_core.runtime.diffusers_adapter import attention_modules
from dualanodiff_core.model.layers import layer_key
from dualanodiff_core.options import from_namespace
from dualanodiff_core.errors import DualAnoDiffError
from reference_layout import reference_state_dict
from synthetic_data import write_mvtec_category
from tiny_models import tiny_unet

GEN = "generate --base-model {sd} --checkpoint {ckpt} --object bottle --defect scratch --resolution 64 --steps 2 -n 1"
TRAIN = "train --base-model {sd} --images {ws}/images --masks {ws}/masks --resolution 64 --steps 2"


class _Payload:
    def __reduce__(self):
        return (print, ("never",))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_sd):
    """The files the cases point at; ``{ws}`` and ``{sd}`` in a case's argv."""
    ws = tmp_path_factory.mktemp("bad_input")
    unet = tiny_unet()
    layers = random_layers(unet, rank=4, seed=7)
    save_checkpoint(ws / "good.safetensors", DualAnoDiffCheckpoint(layers_to_tensors(layers),
                                                                   make_metadata(4, ["unet_lora", "saim"])))
    ref = reference_state_dict({p: layers[layer_key(p)] for p in attention_modules(unet)})
    (ws / "ref").mkdir()
    bad_key = next(k for k in ref if ".to_k_lora.1.down." in k)
    save_file({**ref, bad_key: torch.zeros(2, ref[bad_key].shape[1])}, str(ws / "ref" / "pytorch_lora_weights.safetensors"))
    torch.save({"x.processor.to_q_lora.0.down.weight": torch.zeros(1), "evil": _Payload()}, ws / "ref" / "evil.bin")
    good = (ws / "good.safetensors").read_bytes()
    (ws / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(1)}, str(ws / "plain_lora.safetensors"))
    (ws / "notes.txt").write_text("not a model")
    (ws / "a_file").write_text("I am a file")
    (ws / "existing.safetensors").write_bytes(b"keep me")
    (ws / "empty_dir").mkdir()
    (ws / "unet_missing" / "vae").mkdir(parents=True)
    write_mvtec_category(ws / "mvtec" / "bottle", n=6)
    for sub in ("images", "masks", "bad_images", "bad_masks"):
        (ws / sub).mkdir()
    for i in range(2):
        img = np.full((64, 64, 3), 100, np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[10:14, 5:50] = 255
        Image.fromarray(img).save(ws / "images" / f"{i}.png")
        Image.fromarray(mask).save(ws / "masks" / f"{i}.png")
    Image.fromarray(np.zeros((32, 32), np.uint8) + 255).save(ws / "bad_masks" / "small.png")
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(ws / "bad_images" / "small.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(ws / "bad_masks" / "empty.png")
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(ws / "bad_images" / "empty.png")
    png = (ws / "images" / "0.png").read_bytes()
    (ws / "bad_images" / "cut.png").write_bytes(png[: len(png) // 3])
    (ws / "bad_masks" / "cut.png").write_bytes((ws / "masks" / "0.png").read_bytes())
    # a dataset made with --steps 2 --seed 0, and a training run's resumable checkpoint and final file
    fmt = dict(sd=tiny_sd, ws=ws, ckpt=ws / "good.safetensors")
    assert main((GEN.format(**fmt) + f" --output-dir {ws}/data").split()) == 0
    state = ws / "run" / "checkpoints" / "step-000001"
    state.mkdir(parents=True)
    settings = {"images": str(ws / "images"), "masks": str(ws / "masks"), "lr": 2e-5, "rank": 32}
    (state / "state.json").write_text(json.dumps({"step": 1, "name": "images", "settings": settings}))
    (ws / "finished").mkdir()
    (ws / "finished" / "images.safetensors").write_bytes(b"an earlier run's model")
    return ws


# id, argv (placeholders: {ws} workspace, {sd} tiny base model, {ckpt} a good checkpoint), message regex
CASES = [
    # convert
    ("convert-missing", "convert {ws}/nope.safetensors", r"nope.safetensors does not exist"),
    ("convert-folder", "convert {ws}/empty_dir", r"empty_dir is a folder; give a file"),
    ("convert-wrong-kind", "convert {ws}/notes.txt", r"notes.txt: expected a .safetensors/.bin file"),
    ("convert-truncated", "convert {ws}/truncated.safetensors -o {ws}/o.safetensors", r"truncated.safetensors is not a readable .safetensors file"),
    ("convert-branch-shapes", "convert {ws}/ref/pytorch_lora_weights.safetensors -o {ws}/o.safetensors",
     r"to_k_lora\.\{0,1\}\.down\.weight differ in shape between the two branches \(\(4, \d+\) and \(2, \d+\)\)"),
    ("convert-pickle-objects", "convert {ws}/ref/evil.bin -o {ws}/o.safetensors",
     r"^(?!.*weights_only)[^\n]*evil.bin holds Python objects other than tensors \(print\) and was refused for safety[^\n]*\n?$"),
    ("convert-output-exists", "convert {ws}/good.safetensors -o {ws}/existing.safetensors", r"existing.safetensors already exists.*--overwrite"),
    ("convert-output-folder", "convert {ws}/good.safetensors -o {ws}/empty_dir", r"--output .*empty_dir is a folder"),
    ("convert-output-under-file", "convert {ws}/good.safetensors -o {ws}/a_file/o.safetensors", r"o.safetensors lies under .*a_file, which is a file"),
    # export-lora
    ("export-plain-lora", "export-lora {ws}/plain_lora.safetensors --output-dir {ws}/x", r"not a DualAnoDiff checkpoint.*ordinary LoRA"),
    ("export-name-escapes", "export-lora {ws}/good.safetensors --name ../up --output-dir {ws}/x", r"--name '../up' is not allowed as a folder name"),
    ("export-output-file", "export-lora {ws}/good.safetensors --output-dir {ws}/a_file", r"--output-dir .*a_file is a file, so it cannot be a folder"),
    ("export-corrupt", "export-lora {ws}/truncated.safetensors --output-dir {ws}/x", r"not a readable .safetensors file"),
    # train
    ("train-output-file", TRAIN + " --output-dir {ws}/a_file", r"--output-dir .*a_file is a file, so it cannot be a folder"),
    ("train-resolution-0", TRAIN + " --resolution 0 --output-dir {ws}/t", r"--resolution must be at least 8, got 0"),
    ("train-resolution-odd", TRAIN + " --resolution 100 --output-dir {ws}/t", r"--resolution 100 is not a multiple of 8"),
    ("train-lr-0", TRAIN + " --lr 0 --output-dir {ws}/t", r"--lr must be above 0, got 0.0"),
    ("train-lr-nan", TRAIN + " --lr nan --output-dir {ws}/t", r"--lr must be a finite number, got nan"),
    ("train-steps-0", TRAIN + " --steps 0 --output-dir {ws}/t", r"--steps must be at least 1, got 0"),
    ("train-mvtec-missing", "train --base-model {sd} --mvtec {ws}/nope --defect x --output-dir {ws}/t", r"--mvtec .*nope does not exist"),
    ("train-mvtec-defect", "train --base-model {sd} --mvtec {ws}/mvtec/bottle --defect hole --output-dir {ws}/t", r"no defect type 'hole'; available: scratch"),
    ("train-bad-data", "train --base-model {sd} --images {ws}/bad_images --masks {ws}/bad_masks --output-dir {ws}/t",
     r"unusable training data:.*cut.png: unreadable.*empty.png: empty mask.*small.png: size 32x32 differs from image 64x64"),
    ("train-base-missing", "train --base-model {ws}/nope --images {ws}/images --masks {ws}/masks --output-dir {ws}/t", r"base model not found: .*nope"),
    ("train-base-no-unet", "train --base-model {ws}/unet_missing --images {ws}/images --masks {ws}/masks --output-dir {ws}/t", r"no 'unet' subfolder"),
    ("train-base-wrong-kind", "train --base-model {ws}/notes.txt --images {ws}/images --masks {ws}/masks --output-dir {ws}/t", r"notes.txt: expected a diffusers folder"),
    ("train-u2net-missing", TRAIN + " --bcm --u2net {ws}/u2net.pth --output-dir {ws}/t", r"--u2net .*u2net.pth does not exist"),
    ("train-u2net-unused", TRAIN + " --object-masks {ws}/masks --output-dir {ws}/t", r"only serve --bcm"),
    ("train-name-escapes", TRAIN + " --name a/b --output-dir {ws}/t", r"--name 'a/b' is not allowed as a folder name"),
    ("train-resume-nothing", TRAIN + " --resume latest --output-dir {ws}/t", r"--resume latest: no checkpoint in"),
    ("train-resume-other-settings", TRAIN + " --resume latest --lr 1e-3 --output-dir {ws}/run",
     r"step-000001 was made with other settings \(lr: 2e-05 there, 0.001 now\)"),
    ("train-resume-past-end", TRAIN + " --resume latest --lr 2e-5 --rank 32 --steps 1 --output-dir {ws}/run", r"leaves nothing to train"),
    ("train-fresh-over-checkpoints", TRAIN + " --output-dir {ws}/run", r"checkpoints is from an earlier run: pass --resume latest"),
    ("train-fresh-over-model", TRAIN + " --output-dir {ws}/finished", r"images.safetensors is from an earlier run"),
    ("train-bad-split", TRAIN + " --split many --output-dir {ws}/t", r"--split must be one of floor, reference"),
    # generate
    ("generate-output-file", GEN + " --output-dir {ws}/a_file", r"--output-dir .*a_file is a file, so it cannot be a folder"),
    ("generate-resolution-0", GEN + " --resolution 0 --output-dir {ws}/g", r"--resolution must be at least 8, got 0"),
    ("generate-resolution-negative", GEN + " --resolution -64 --output-dir {ws}/g", r"--resolution must be at least 8, got -64"),
    ("generate-resolution-odd", GEN + " --resolution 60 --output-dir {ws}/g", r"--resolution 60 is not a multiple of 8"),
    ("generate-pairs-0", GEN + " -n 0 --output-dir {ws}/g", r"--num-pairs must be at least 1, got 0"),
    ("generate-guidance-nan", GEN + " --guidance nan --output-dir {ws}/g", r"--guidance must be a finite number"),
    ("generate-threshold", GEN + " --mask-threshold 1.5 --output-dir {ws}/g", r"--mask-threshold must lie in \(0, 1\), got 1.5"),
    ("generate-name-escapes", GEN + " --object ../escape --output-dir {ws}/g", r"--object '../escape' is not allowed as a folder name"),
    ("generate-checkpoint-missing", GEN + " --checkpoint {ws}/nope.safetensors --output-dir {ws}/g", r"--checkpoint .*nope.safetensors does not exist"),
    ("generate-checkpoint-truncated", GEN + " --checkpoint {ws}/truncated.safetensors --output-dir {ws}/g", r"not a readable .safetensors file"),
    ("generate-checkpoint-wrong-kind", GEN + " --checkpoint {ws}/notes.txt --output-dir {ws}/g", r"expected a .safetensors/.bin file"),
    ("generate-no-bcm", GEN + " --backgrounds {ws}/images --object-masks {ws}/masks --output-dir {ws}/g", r"has no BCM weights"),
    ("generate-u2net-needed", GEN + " --mask-method u2net --output-dir {ws}/g", r"--mask-method u2net needs --u2net"),
    ("generate-sam-missing", GEN + " --mask-method sam --sam {ws}/sam.pth --output-dir {ws}/g", r"--sam .*sam.pth does not exist"),
    ("generate-resume-other-steps", GEN.replace("--steps 2", "--steps 3") + " --output-dir {ws}/data",
     r"scratch was made with other settings \(steps: 2 there, 3 now\)"),
    ("generate-resume-other-seed", GEN + " --seed 5 --output-dir {ws}/data", r"other settings \(seed: 0 there, 5 now\)"),
    ("generate-resume-other-scheduler", GEN + " --scheduler ddim -n 2 --output-dir {ws}/data", r"scheduler: 'pndm' there, 'ddim' now"),
    ("generate-base-missing", GEN.replace("{sd}", "{ws}/nope") + " --output-dir {ws}/g", r"base model not found"),
    ("generate-tokenizer-empty", GEN + " --tokenizer {ws}/empty_dir --output-dir {ws}/g", r"has neither vocab.json with merges.txt nor tokenizer.json"),
    ("generate-unknown-option", GEN + " --stepz 3 --output-dir {ws}/g", r"unrecognized arguments: --stepz 3"),
    ("generate-abbreviated-option", GEN + " --output-dir {ws}/g --guid 3", r"unrecognized arguments: --guid 3"),
    ("train-abbreviated-option", TRAIN + " --output-dir {ws}/t --lr 1e-4 --rank 4 --step 3", r"unrecognized arguments: --step 3"),
    ("evaluate-abbreviated-option", "evaluate --mvtec {ws}/mvtec/bottle --output-dir {ws}/e --epoch 2",
     r"unrecognized arguments: --epoch 2"),
    # demo
    ("demo-out-file", "demo --out {ws}/a_file", r"--out .*a_file is a file, so it cannot be a folder"),
    ("demo-threshold", "demo --out {ws}/d --mask-threshold 0", r"--mask-threshold must lie in \(0, 1\), got 0.0"),
    ("demo-shots-0", "demo --out {ws}/d --shots 0", r"--shots must be at least 1, got 0"),
    ("demo-base-missing", "demo --out {ws}/d --base-model {ws}/nope", r"base model not found"),
]


def _snapshot(*roots) -> dict:
    return {str(p): (p.is_dir(), p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest())
            for root in roots for p in [Path(root), *Path(root).rglob("*")]}


def _run_cli(argv: list, capsys) -> tuple:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_refuses_bad_input_cleanly(ws, tiny_sd, capsys, argv, message):
    before = _snapshot(ws, tiny_sd)
    code, err = _run_cli(argv.format(ws=ws, sd=tiny_sd, ckpt=ws / "good.safetensors").split(), capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[0].startswith(f"dualanodiff {argv.split()[0]}: error: "), err
    assert re.search(message, err, re.S), err
    assert _snapshot(ws, tiny_sd) == before, "a refused run must leave the disk as it was"


def test_usage_errors_point_to_help_instead_of_printing_usage(capsys):
    code, err = _run_cli(["generate", "--steps", "x"], capsys)
    assert code == 2
    assert err.splitlines() == ["dualanodiff generate: error: argument --steps: invalid int value: 'x'",
                                "Run 'dualanodiff generate --help' for the options."]


def _namespace(argv: str, **fmt) -> argparse.Namespace:
    return build_parser().parse_args(argv.format(**fmt).split())


@pytest.mark.parametrize("argv, message", [
    (GEN + " --resolution 0 --output-dir {ws}/g", r"--resolution must be at least 8"),
    (GEN + " --output-dir {ws}/a_file", r"is a file, so it cannot be a folder"),
    (GEN + " --seed 5 --output-dir {ws}/data", r"other settings \(seed: 0 there, 5 now\)"),
])
def test_python_api_generate_raises_the_same_errors(ws, tiny_sd, argv, message):
    from dualanodiff_core.generation.generate import GenerateConfig, generate

    before = _snapshot(ws)
    with pytest.raises(DualAnoDiffError, match=message):
        generate(from_namespace(GenerateConfig, _namespace(argv, ws=ws, sd=tiny_sd, ckpt=ws / "good.safetensors")))
    assert _snapshot(ws) == before


def test_python_api_train_raises_the_same_errors(ws, tiny_sd):
    from dualanodiff_core.training.train_args import TrainConfig
    from dualanodiff_core.training.trainer import train

    before = _snapshot(ws)
    with pytest.raises(DualAnoDiffError, match=r"other settings \(lr: 2e-05 there, 0.001 now\)"):
        train(from_namespace(TrainConfig, _namespace(TRAIN + " --resume latest --lr 1e-3 --output-dir {ws}/run", ws=ws, sd=tiny_sd)))
    with pytest.raises(DualAnoDiffError, match=r"differ in shape"):
        open_checkpoint(ws / "ref" / "pytorch_lora_weights.safetensors")
    assert _snapshot(ws) == before


def test_generate_continues_a_dataset_made_with_the_same_settings(ws, tiny_sd, tmp_path, capsys):
    data = tmp_path / "data"
    fmt = dict(ws=ws, sd=tiny_sd, ckpt=ws / "good.safetensors")
    assert main((GEN.format(**fmt) + f" --output-dir {data}").split()) == 0
    assert main((GEN.format(**fmt).replace("-n 1", "-n 2") + f" --output-dir {data}").split()) == 0
    lines = (data / "bottle" / "scratch" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(x)["seed"] for x in lines] == [0, 1]
    assert "generate: 1 process on cpu" in capsys.readouterr().err
