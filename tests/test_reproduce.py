"""`dualanodiff reproduce`: the plan, sharing between processes and resuming without models, then the
whole run end to end on a tiny model and a small MVTec-shaped root."""
import json
import re
from pathlib import Path

import pytest

from dualanodiff_core.cli import main
from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.reproduce import plan as P
from dualanodiff_core.reproduce import runner
from dualanodiff_core.reproduce.estimate import StepSeconds, parse_step_seconds, stage_hours
from synthetic_data import write_mvtec_category


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec_root")
    write_mvtec_category(root / "bottle", "scratch", n=6)
    write_mvtec_category(root / "bottle", "crack", n=6, seed=1)
    write_mvtec_category(root / "cable", "bent", n=6, seed=2)
    return root


def _cfg(root, out, **kw):
    return P.ReproduceConfig(mvtec=root, output_dir=out, base_model=Path("sd15"), **kw)


def test_plan_lists_train_and_generate_per_defect_type_then_evaluate_per_category(mvtec_root, tmp_path):
    stages = P.build_plan(_cfg(mvtec_root, tmp_path))
    assert [s.name for s in stages] == ["train-bottle-crack", "generate-bottle-crack", "train-bottle-scratch",
                                        "generate-bottle-scratch", "train-cable-bent", "generate-cable-bent",
                                        "evaluate-bottle", "evaluate-cable"]
    train = stages[0].argv
    assert train[train.index("--mvtec") + 1] == str(mvtec_root / "bottle")
    for flag, value in (("--steps", "5000"), ("--rank", "32"), ("--lr", "2e-05"), ("--seed", "32"),
                        ("--flip", "reference"), ("--resample", "bilinear"), ("--batches", "epoch")):
        assert train[train.index(flag) + 1] == value, flag
    gen = stages[1].argv
    assert gen[gen.index("--checkpoint") + 1] == str(tmp_path / "models/bottle/crack/bottle_crack.safetensors")
    assert (gen[gen.index("-n") + 1], gen[gen.index("--steps") + 1], gen[gen.index("--scheduler") + 1]) == ("500", "100", "pndm")
    ev = stages[6].argv
    assert ev[ev.index("--defects") + 1: ev.index("--defects") + 3] == ("crack", "scratch")
    assert f"DualAnoDiff={tmp_path / 'samples'}" in ev and "--select-on-test" not in ev
    assert stages[0].command().startswith("dualanodiff train --mvtec ")


def test_plan_refuses_unknown_names(mvtec_root, tmp_path):
    with pytest.raises(DualAnoDiffError, match="no category 'carpet'.*available: bottle, cable"):
        P.discover(mvtec_root, ["carpet"], None)
    with pytest.raises(DualAnoDiffError, match="no defect type 'hole'"):
        P.discover(mvtec_root, None, ["hole"])
    with pytest.raises(DualAnoDiffError, match="leaves no defect type in cable"):
        P.discover(mvtec_root, None, ["crack"])
    with pytest.raises(DualAnoDiffError, match="holds no category folders"):
        P.discover(mvtec_root / "bottle" / "test", None, None)
    assert P.discover(mvtec_root, ["cable"], None) == {"cable": ["bent"]}


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_processes_share_every_stage_once_and_keep_a_defect_types_stages_together(mvtec_root, tmp_path, count):
    stages = P.build_plan(_cfg(mvtec_root, tmp_path))
    shares = [runner.my_share(stages, i, count) for i in range(count)]
    assert sorted(s.name for share in shares for s in share) == sorted(s.name for s in stages)
    for share in shares:
        units = {(s.category, s.defect) for s in share if s.kind != "evaluate"}
        for c, d in units:
            assert {s.kind for s in share if (s.category, s.defect) == (c, d)} == {"train", "generate"}
    if count == 2:
        assert [s.name for s in shares[1]] == ["train-bottle-scratch", "generate-bottle-scratch", "evaluate-cable"]


def test_status_and_resume_come_from_the_files(mvtec_root, tmp_path):
    cfg = _cfg(mvtec_root, tmp_path, pairs=3)
    train, gen, *_ = P.build_plan(cfg)
    ev = P.build_plan(cfg)[-2]
    assert [P.status(s, cfg) for s in (train, gen, ev)] == ["pending"] * 3
    (train.output.parent / "checkpoints" / "step-000500").mkdir(parents=True)
    assert P.status(train, cfg) == "pending", "a folder without its state.json is no checkpoint"
    (train.output.parent / "checkpoints" / "step-000500" / "state.json").write_text('{"step": 500}')
    assert P.status(train, cfg) == "partial" and P.resume_flags(train, cfg) == ["--resume", "latest"]
    train.output.write_bytes(b"x")
    assert P.status(train, cfg) == "done" and P.resume_flags(train, cfg) == []
    gen.output.mkdir(parents=True)
    (gen.output / "manifest.jsonl").write_text("".join(json.dumps({"index": i}) + "\n" for i in range(2)))
    assert P.status(gen, cfg) == "partial"
    with (gen.output / "manifest.jsonl").open("a") as f:
        f.write(json.dumps({"index": 2}) + "\n")
    assert P.status(gen, cfg) == "done"
    ev.output.parent.mkdir(parents=True)
    assert P.status(ev, cfg) == "partial"
    ev.output.write_text("{}")
    assert P.status(ev, cfg) == "done"


def test_stage_processes_leave_the_launch_group_and_take_their_own_gpu(monkeypatch):
    for k, v in {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1",
                 "CUDA_VISIBLE_DEVICES": "4,5,6,7", "ACCELERATE_MIXED_PRECISION": "fp16"}.items():
        monkeypatch.setenv(k, v)
    assert runner.process_position() == (3, 4, 1)
    env = runner.stage_env(1, 4)
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"} & set(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["ACCELERATE_MIXED_PRECISION"] == "fp16"
    assert runner.stage_env(0, 1)["CUDA_VISIBLE_DEVICES"] == "4,5,6,7", "one process keeps what it was given"


def test_waiting_stops_when_another_process_failed(mvtec_root, tmp_path):
    cfg = _cfg(mvtec_root, tmp_path)
    gen = P.build_plan(cfg)[1]
    runner.failed_marker(cfg, gen).parent.mkdir(parents=True)
    runner.failed_marker(cfg, gen).write_text("exit code 1")
    with pytest.raises(DualAnoDiffError, match="generate-bottle-crack failed in another process"):
        runner.wait_for([gen], cfg, poll_seconds=0)


def test_estimate_adds_up_the_stages(mvtec_root, tmp_path):
    cfg = _cfg(mvtec_root, tmp_path)
    seconds = parse_step_seconds("train=2.0,sample=0.5,detector=0.1")
    train, gen, *_ = P.build_plan(cfg)
    assert stage_hours(train, cfg, seconds) == pytest.approx(5000 * 2.0 / 3600)
    assert stage_hours(gen, cfg, seconds) == pytest.approx(125 * 100 * 0.5 / 3600)  # 500 pairs in calls of 4
    ev = P.build_plan(cfg)[-1]
    assert stage_hours(ev, cfg, seconds) == pytest.approx(3 * 200 * 32 * 0.1 / 3600)  # 3 sets x 200 epochs x 32 steps
    for bad in ("train=1,sample=1", "train=1,sample=x,detector=1", "train=0,sample=1,detector=1"):
        with pytest.raises(DualAnoDiffError, match="--step-seconds"):
            parse_step_seconds(bad)


def test_estimate_counts_the_options_passed_through(mvtec_root, tmp_path):
    """Later options win in each stage's command, so the estimate takes its figures from there (issue #38, 6)."""
    cfg = _cfg(mvtec_root, tmp_path, train_args=["--steps", "40"], generate_args=["-n", "10", "--batch-size", "2",
               "--steps", "5"], evaluate_args=["--epochs", "2", "--samples-per-epoch", "8", "--batch-size", "4",
                                               "--seeds", "0", "1", "--baselines", "real-only"])
    seconds = parse_step_seconds("train=2.0,sample=0.5,detector=0.1")
    train, gen, *_, ev = P.build_plan(cfg)
    assert stage_hours(train, cfg, seconds) == pytest.approx(40 * 2.0 / 3600)
    assert stage_hours(gen, cfg, seconds) == pytest.approx(5 * 5 * 0.5 / 3600)  # 10 pairs in calls of 2, 5 steps
    # (DualAnoDiff + real-only) x 2 seeds = 4 detectors, 2 epochs x 2 steps of 4 samples each
    assert stage_hours(ev, cfg, seconds) == pytest.approx(4 * 2 * 2 * 0.1 / 3600)
    # with the shots mixed in: + real+DualAnoDiff, and a placed set with its mixed row, x 2 seeds
    mixed = _cfg(mvtec_root, tmp_path, evaluate_args=cfg.evaluate_args + ["--mix-real", "--placed", str(tmp_path)])
    assert stage_hours(P.build_plan(mixed)[-1], mixed, seconds) == pytest.approx(5 * 2 * 2 * 2 * 0.1 / 3600)


def test_generation_counts_as_done_at_the_pairs_passed_through(mvtec_root, tmp_path):
    cfg = _cfg(mvtec_root, tmp_path, generate_args=["-n", "2"])
    gen = P.build_plan(cfg)[1]
    gen.output.mkdir(parents=True)
    (gen.output / "manifest.jsonl").write_text('{"index": 0}\n{"index": 1}\n')
    assert P.status(gen, cfg) == "done"  # not waiting for reproduce's 500 forever


def test_dry_run_prints_the_plan_with_hours_and_writes_nothing(mvtec_root, tiny_sd, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "--mvtec", str(mvtec_root), "--base-model", str(tiny_sd), "--output-dir", str(out),
                 "--dry-run", "--step-seconds", "train=1.8,sample=0.3,detector=0.05"]) == 0
    text = capsys.readouterr().out
    assert "| train-bottle-crack | pending | 2.50 |" in text  # 5000 x 1.8 s
    assert "3 defect types, 2 categories" in text and "given by --step-seconds" in text
    assert "dualanodiff evaluate --mvtec" in text
    assert not out.exists()


class _DetectorSize(Exception):
    pass


def test_dry_run_measures_the_detector_the_evaluate_args_describe(mvtec_root, tiny_sd, tmp_path, capsys, monkeypatch,
                                                                    one_thread):
    """Not the paper's 64-wide detector at 256 px when --evaluate-args asks for a tiny one (issue #38, 6)."""
    from dualanodiff_core.evaluation import detector

    seen = []

    class Recorded(detector.DiscriminativeUNet):
        def __init__(self, base_width):
            if base_width != 4:  # the full-size one takes minutes on a CPU: stop at once
                raise _DetectorSize(f"measured a detector {base_width} wide")
            super().__init__(base_width)

        def forward(self, x):
            seen.append(tuple(x.shape))
            return super().forward(x)

    monkeypatch.setattr(detector, "DiscriminativeUNet", Recorded)
    out = tmp_path / "run"
    assert main(["reproduce", "--mvtec", str(mvtec_root), "--categories", "cable", "--base-model", str(tiny_sd),
                 "--output-dir", str(out), "--steps", "2", "--rank", "4", "--resolution", "64", "--pairs-per-step", "2",
                 "--cpu", "--dry-run", "--evaluate-args", "--resolution 32 --base-width 4 --epochs 2 "
                 "--samples-per-epoch 8 --batch-size 2"]) == 0
    assert set(seen) == {(2, 3, 32, 32)}
    assert "| evaluate-cable | pending | 0.00 |" in capsys.readouterr().out  # 3 detectors x 2 epochs x 4 tiny steps
    assert not out.exists()


_STEPS = "train=1.8,sample=0.3,detector=0.05"
# what reproduce refuses up front, in the dry run and before the first stage of a run alike (issue #38, 7)
REFUSED = [
    (["--train-args", "--bogus 1"], r"--train-args '--bogus 1': dualanodiff train would refuse it: unrecognized "
     r"arguments: --bogus 1; correct --train-args \(`dualanodiff train --help` lists the options\)$"),
    (["--evaluate-args", "--no-such-flag 2"], r"--evaluate-args '--no-such-flag 2': dualanodiff evaluate would refuse "
     r"it: unrecognized arguments: --no-such-flag 2;"),
    (["--evaluate-args", "--epoch 2"], r"--evaluate-args '--epoch 2': .*unrecognized arguments: --epoch 2 \(did you "
     r"mean --epochs\? options are not abbreviated\)"),
    (["--generate-args", "--batch 2"], r"did you mean --batch-size\?"),
    (["--train-args", "--rank 0"], r"--train-args '--rank 0': dualanodiff train would refuse it: --rank must be at "
     r"least 1, got 0"),
    (["--generate-args", "--batch-size 0"], r"--generate-args '--batch-size 0': .*--batch-size must be at least 1"),
    (["--generate-args", "--scheduler nope"], r"argument --scheduler: invalid choice: 'nope'"),
    (["--evaluate-args", "--epochs 0"], r"--evaluate-args '--epochs 0': .*--epochs must be at least 1, got 0"),
    (["--evaluate-args=--select-last", "--select-on-test"], r"--select-last: not allowed with argument "
     r"--select-on-test"),
    (["--resolution", "100"], r"dualanodiff train would refuse the options reproduce gives it: --resolution 100 is "
     r"not a multiple of 8"),
    (["--train-arg", "--steps 2"], r"unrecognized arguments: --train-arg"),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("extra, message", REFUSED, ids=[" ".join(r[0]) for r in REFUSED])
def test_reproduce_refuses_what_a_stage_would_refuse_before_any_stage_runs(mvtec_root, tiny_sd, tmp_path, capsys,
                                                                           monkeypatch, extra, message, dry_run):
    def no_stage(stage, *a):
        raise AssertionError(f"stage {stage.name} ran")

    monkeypatch.setattr(runner, "run_stage", no_stage)
    out = tmp_path / "run"
    try:
        code = main(["reproduce", "--mvtec", str(mvtec_root), "--base-model", str(tiny_sd), "--output-dir", str(out),
                     *(["--dry-run", "--step-seconds", _STEPS] if dry_run else []), *extra])
    except SystemExit as exc:  # reproduce's own parser
        code = exc.code
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and re.search(message, lines[0]), lines
    assert lines[1:] in ([], ["Run 'dualanodiff reproduce --help' for the options."]), lines
    assert not out.exists()


TINY_EVAL = "--resolution 32 --base-width 4 --epochs 2 --samples-per-epoch 8 --batch-size 4 --select-every 1 --previews 1"


def test_reproduce_end_to_end_on_a_tiny_model_then_resumes_without_redoing(mvtec_root, tiny_sd, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    argv = ["reproduce", "--mvtec", str(mvtec_root), "--categories", "bottle", "--defects", "scratch",
            "--base-model", str(tiny_sd), "--output-dir", str(out), "--steps", "2", "--rank", "4", "--resolution", "64",
            "--pairs-per-step", "2", "--pairs", "2", "--sample-steps", "2", "--cpu", "--poll-seconds", "0.1",
            "--train-args", "--checkpoint-every 1 --validate-every 0", "--generate-args", "--batch-size 2 --mask-threshold 0.02",
            "--evaluate-args", TINY_EVAL]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert (out / "models/bottle/scratch/bottle_scratch.safetensors").is_file()
    assert not (out / "models/bottle/scratch/checkpoints").exists(), "a finished model's checkpoints are removed"
    assert len(list((out / "samples/bottle/scratch/image").glob("*.png"))) == 2
    summary = json.loads((out / "evaluation/bottle/metrics.json").read_text())
    assert set(summary["sets"]) == {"DualAnoDiff", "real-only", "crop-paste"}
    assert summary["protocol"]["selection"] == "validation"
    rows = [line for line in table.splitlines() if line.startswith("| bottle |") or line.startswith("| **mean** |")]
    assert len(rows) == 4, table  # ours vs paper, and the sets' table: one category row and the mean in each
    assert "/ 99.1 |" in table and "/ 84.5 |" in table, "the paper's means beside ours"
    assert "generation options: --batch-size 2 --mask-threshold 0.02 (by --generate-args, over the above)" in table
    ap = summary["sets"]["DualAnoDiff"]["mean"]["pixel_ap"]
    assert f"| bottle | {100 * summary['sets']['DualAnoDiff']['mean']['pixel_auroc']:.1f} / — | {100 * ap:.1f} / — |" in table
    logs = {p.name: p.read_text() for p in (out / "logs").glob("*.log")}
    assert sorted(logs) == ["evaluate-bottle.log", "generate-bottle-scratch.log", "train-bottle-scratch.log"]
    train_cfg = json.loads((out / "models/bottle/scratch/training_config.json").read_text())
    assert (train_cfg["flip"], train_cfg["resample"], train_cfg["batches"], train_cfg["seed"]) == ("reference", "bilinear", "epoch", 32)

    # a finished reproduction runs nothing again; a lost evaluation is redone alone
    (out / "evaluation/bottle/metrics.json").unlink()
    assert main(argv) == 0
    after = {p.name: p.read_text() for p in (out / "logs").glob("*.log")}
    assert after["train-bottle-scratch.log"] == logs["train-bottle-scratch.log"]
    assert after["generate-bottle-scratch.log"] == logs["generate-bottle-scratch.log"]
    assert after["evaluate-bottle.log"].count("$ dualanodiff evaluate") == 2
    assert (out / "evaluation/bottle/metrics.json").is_file()


def test_a_failing_stage_names_its_log_and_leaves_a_marker(mvtec_root, tiny_sd, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reproduce", "--mvtec", str(mvtec_root), "--categories", "cable", "--base-model", str(tiny_sd),
                 "--output-dir", str(out), "--steps", "1", "--resolution", "64", "--cpu",
                 "--train-args", "--resume latest"]) == 2  # options pass the checks up front; no checkpoint to resume
    err = capsys.readouterr().err
    assert "stage train-cable-bent failed (exit code 2)" in err and "--resume latest: no checkpoint in" in err
    assert (out / "logs" / "train-cable-bent.failed").is_file()
