"""Bad input to the exports: exit code 2, one line naming the file or value and what to do, and nothing on
disk created or changed; a failure while writing leaves no half-written export."""
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from dualanodiff_core.cli import main
from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.export import writer
from dualanodiff_core.export.source import read_samples
from export_data import shaped_masks, tree, write_pairs_dataset

SHAPES = shaped_masks(32)


@pytest.fixture
def ws(tmp_path):
    ds = tmp_path / "ds"
    write_pairs_dataset(ds, "bottle", "scratch", [SHAPES["scratch"], SHAPES["hole"], SHAPES["empty"]])
    assert main(["export-dataset", str(ds), "--format", "coco,yolo", "--output", str(tmp_path / "done")]) == 0
    (tmp_path / "foreign" / "coco").mkdir(parents=True)
    (tmp_path / "foreign" / "coco" / "mine.json").write_text("{}")
    missing = tmp_path / "missing"
    shutil.copytree(ds, missing)
    (missing / "bottle" / "scratch" / "mask" / "1.png").unlink()
    sized = tmp_path / "sized"
    shutil.copytree(ds, sized)
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(sized / "bottle" / "scratch" / "mask" / "0.png")
    broken = tmp_path / "broken"
    shutil.copytree(ds, broken)
    (broken / "bottle" / "scratch" / "mask" / "2.png").write_bytes(b"not a png")
    other = tmp_path / "other"  # the same names, other pixels
    write_pairs_dataset(other, "bottle", "scratch", [SHAPES["scratch"], SHAPES["hole"]], seed=9)
    (tmp_path / "a_file").write_text("I am a file")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "no_samples" / "bottle" / "scratch").mkdir(parents=True)
    (tmp_path / "no_samples" / "bottle" / "scratch" / "manifest.jsonl").write_text("")
    return tmp_path


EXPORT = "export-dataset {ws}/ds --output {ws}/out"
CASES = [
    ("unknown-format", EXPORT + " --format cocoo", r"--format 'cocoo': 'cocoo' is not a dataset format; choose from pairs, mvtec, coco, yolo"),
    ("unknown-in-list", EXPORT + " --format coco,yaml", r"'yaml' is not a dataset format"),
    ("empty-format", EXPORT + " --format coco,", r"'' is not a dataset format"),
    ("layout-format", EXPORT + " --format pairs", r"--format pairs: export-dataset writes coco and yolo from a dataset that holds the pairs or mvtec layout"),
    ("val-share-one", EXPORT + " --format coco --val-share 1", r"--val-share must lie in \[0, 1\) .*got 1.0"),
    ("val-share-nan", EXPORT + " --format coco --val-share nan", r"--val-share must lie in \[0, 1\)"),
    ("other-settings", "export-dataset {ws}/ds --output {ws}/done --format coco --val-share 0.3",
     r"done/coco was made with other settings \(val_share: 0.1 there, 0.3 now\); export with the settings it was made with"),
    ("other-seed", "export-dataset {ws}/ds --output {ws}/done --format yolo --seed 3",
     r"done/yolo was made with other settings \(seed: 0 there, 3 now\)"),
    ("not-an-export", "export-dataset {ws}/ds --output {ws}/foreign --format coco",
     r"foreign/coco exists and is not a coco export of dualanodiff \(no export.json in it\); choose another --output"),
    ("other-pixels", "export-dataset {ws}/other --output {ws}/done --format coco",
     r"the export already holds images of the same names with other pixels or masks: .*other/bottle/scratch/image/0.png "
     r"\(exported as bottle/scratch/0 in coco/\).*export it into another --output"),
    ("missing-mask", "export-dataset {ws}/missing --format coco",
     r"1 files listed as finished samples are missing: .*missing/bottle/scratch/mask/1.png \(listed in .*manifest.jsonl\)\. "
     r"Restore them, or remove those samples' lines from the manifest"),
    ("mask-size", "export-dataset {ws}/sized --format coco",
     r"the mask .*sized/bottle/scratch/mask/0.png is 16x8 but its image .*0.png is 32x32"),
    ("mask-unreadable", "export-dataset {ws}/broken --format yolo", r"cannot read the mask .*broken/bottle/scratch/mask/2.png as an image"),
    ("no-manifest", "export-dataset {ws}/empty_dir --format coco", r"dataset folder .*empty_dir holds no manifest.jsonl"),
    ("no-samples", "export-dataset {ws}/no_samples --format coco", r"no_samples: its manifests .*manifest.jsonl\) list no finished sample yet"),
    ("no-dataset", "export-dataset {ws}/nope --format coco", r"dataset folder .*nope does not exist"),
    ("output-file", "export-dataset {ws}/ds --output {ws}/a_file --format coco", r"--output .*a_file is a file"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_nothing_written(ws, capsys, argv, message):
    before = tree(ws)
    assert main(argv.format(ws=ws).split()) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert tree(ws) == before  # nothing created or changed, no temporary folder left


def test_generate_format_checked_before_any_model_loads(tmp_path, capsys):
    base = ["generate", "--base-model", str(tmp_path / "no_model"), "--checkpoint", str(tmp_path / "no.safetensors"),
            "--output-dir", str(tmp_path / "g"), "--object", "bottle", "--defect", "scratch"]
    for extra, message in [(["--format", "pairs,cocoo"], r"--format 'pairs,cocoo': 'cocoo' is not a dataset format"),
                           (["--val-share", "0.2"], r"--val-share and --split-seed split the coco/yolo export: add --format coco"),
                           (["--format", "yolo", "--val-share", "2"], r"--val-share must lie in \[0, 1\)"),
                           (["--format", "coco"] + ["--object", "coco"], r"--object coco is the name of the coco export's folder")]:
        assert main(base + extra) == 2
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("fail_at", [1, 5])
def test_a_failure_while_writing_a_new_export_leaves_nothing(ws, monkeypatch, fail_at):
    calls = []
    real = shutil.copyfile

    def failing(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError("disk full")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(writer.shutil, "copyfile", failing)
    with pytest.raises(OSError, match="disk full"):
        writer.export(read_samples(ws / "ds"), ws / "out", ("coco", "yolo"))
    assert not (ws / "out").exists()  # neither export appears, no temporary folder stays


def test_a_failure_while_extending_leaves_a_readable_export(ws, monkeypatch):
    """Extending writes whole files renamed into place, annotations after the images they list: a failure
    half way leaves the old export as it was (its annotations, its export.json), plus at most whole new
    images that nothing lists yet."""
    write_pairs_dataset(ws / "ds2", "bottle", "crack", [SHAPES["several"], SHAPES["pinch"]])
    before = tree(ws / "done")
    calls = []
    real = shutil.copyfile

    def failing(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(writer.shutil, "copyfile", failing)
    with pytest.raises(OSError, match="disk full"):
        writer.export(read_samples(ws / "ds2"), ws / "done", ("coco",))
    after = tree(ws / "done")
    for path, data in before.items():
        assert after[path] == data, path
    assert all(p.startswith("coco/images/") and "crack" in p for p in set(after) - set(before))
    assert not [p for p in (ws / "done").rglob("*") if p.name.startswith(".")]  # no temporary file left
    monkeypatch.undo()
    writer.export(read_samples(ws / "ds2"), ws / "done", ("coco",))  # the next run completes it
    state = json.loads((ws / "done" / "coco" / "export.json").read_text())
    assert sorted(state["images"]) == ["bottle/crack/0", "bottle/crack/1", "bottle/scratch/0", "bottle/scratch/1",
                                       "bottle/scratch/2"]


def test_an_extension_stopped_between_its_annotation_files_is_completed_without_duplicates(ws, monkeypatch):
    write_pairs_dataset(ws / "ds2", "bottle", "crack", [SHAPES["several"], SHAPES["pinch"], SHAPES["hole"]])
    real = writer._write

    def stop_at_val(path, data, fresh):
        if path.name == "instances_val.json":
            raise OSError("power cut")
        return real(path, data, fresh)

    monkeypatch.setattr(writer, "_write", stop_at_val)
    with pytest.raises(OSError, match="power cut"):
        writer.export(read_samples(ws / "ds2"), ws / "done", ("coco",))
    monkeypatch.undo()
    writer.export(read_samples(ws / "ds2"), ws / "done", ("coco",))
    state = json.loads((ws / "done" / "coco" / "export.json").read_text())
    listed = []
    for split in ("train", "val"):
        doc = json.loads((ws / "done" / "coco" / "annotations" / f"instances_{split}.json").read_text())
        listed += [img["file_name"] for img in doc["images"]]
        assert {a["image_id"] for a in doc["annotations"]} <= {img["id"] for img in doc["images"]}
    assert sorted(listed) == sorted(v["file"] for v in state["images"].values()) and len(listed) == 6


def test_python_api_raises_the_same_errors(ws):
    with pytest.raises(DualAnoDiffError, match="made with other settings"):
        writer.export(read_samples(ws / "ds"), ws / "done", ("coco",), writer.ExportSettings(val_share=0.5))
