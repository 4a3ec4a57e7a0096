"""`dualanodiff evaluate` end to end at a tiny size: an oracle synthetic set (real-looking defects at their
true masks) must beat random blobs with random masks; a rerun reuses the detectors; saved maps give the
reported metrics back; bad input exits 2 with the file named and nothing written."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dualanodiff_core.cli import build_parser, main
from synthetic_data import write_mvtec_category

TINY = ["--resolution", "32", "--base-width", "8", "--epochs", "6", "--samples-per-epoch", "80", "--batch-size", "8",
        "--lr", "2e-3", "--select-every", "2", "--previews", "3"]


def _category(root):
    """A 12-image MVTec-shaped category whose test/good images are really defect-free."""
    cat = write_mvtec_category(root / "mvtec" / "bottle", n=12, size=64, seed=0)
    shutil.rmtree(cat / "test" / "good")
    (cat / "test" / "good").mkdir()
    spare = write_mvtec_category(root / "spare", n=8, size=64, seed=9)
    for p in sorted((spare / "train" / "good").iterdir()):
        shutil.copy(p, cat / "test" / "good" / p.name)
    return cat


def _oracle(root):
    """generate's layout: real-looking scratches (another draw of the same world) with their true masks."""
    src = write_mvtec_category(root / "oracle_src", n=24, size=64, seed=3)
    leaf = root / "oracle" / "bottle" / "scratch"
    for sub in ("image", "fg", "mask"):
        (leaf / sub).mkdir(parents=True)
    lines = []
    for i, p in enumerate(sorted((src / "test" / "scratch").iterdir())):
        shutil.copy(p, leaf / "image" / f"{i}.png")
        shutil.copy(p, leaf / "fg" / f"{i}.png")
        shutil.copy(src / "ground_truth" / "scratch" / f"{p.stem}_mask.png", leaf / "mask" / f"{i}.png")
        lines.append(json.dumps({"index": i, "seed": i, "mask_empty": False}) + "\n")
    (leaf / "manifest.jsonl").write_text("".join(lines))
    return root / "oracle"


def _random_blobs(root, n=24):
    """Save Dataset's MVTec layout: random colour blobs on normal images, masks somewhere else."""
    rng = np.random.default_rng(1)
    obj = root / "random" / "bottle"
    (obj / "test" / "scratch").mkdir(parents=True)
    (obj / "ground_truth" / "scratch").mkdir(parents=True)
    goods = sorted((root / "oracle_src" / "train" / "good").iterdir())
    for i in range(n):
        img = np.asarray(Image.open(goods[i % len(goods)])).copy()
        y, x = rng.integers(8, 50, 2)
        img[y:y + 6, x:x + 6] = rng.integers(0, 255, 3)
        mask = np.zeros((64, 64), np.uint8)
        y, x = rng.integers(8, 50, 2)
        mask[y:y + 6, x:x + 6] = 255
        Image.fromarray(img).save(obj / "test" / "scratch" / f"{i:03d}.png")
        Image.fromarray(mask).save(obj / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return root / "random"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Width-8 detectors on 32 px images run fastest on one CPU thread (and the machine may be shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    cat = _category(root)
    oracle = _oracle(root)
    blobs = _random_blobs(root)
    argv = ["evaluate", "--mvtec", str(cat), "--synthetic", f"oracle={oracle}", "--synthetic", f"random={blobs}",
            "--output-dir", str(root / "out"), "--save-maps", str(root / "maps"), *TINY]
    return {"root": root, "cat": cat, "oracle": oracle, "blobs": blobs, "argv": argv}


@pytest.fixture(scope="module")
def first_run(world):
    """The first run (its table goes to stdout, its progress to stderr); the tests read what it wrote."""
    return main(world["argv"])


def _metrics(world):
    return json.loads((world["root"] / "out" / "metrics.json").read_text())


def test_help_documents_every_flag(capsys):
    parser = build_parser()
    sub = parser.commands["evaluate"]
    assert sub.description
    for action in sub._actions:
        assert action.help and len(action.help) > 10, f"evaluate {action.option_strings or action.dest} lacks help"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--mvtec", "--synthetic", "--baselines", "--select-on-test", "--save-maps", "--lpips-weights",
                 "--inception-weights", "--metric-weights", "--epochs", "--seeds"):
        assert flag in text


def test_oracle_set_beats_random_blobs(world, first_run):
    assert first_run == 0
    m = _metrics(world)
    assert list(m["sets"]) == ["oracle", "random", "real-only", "crop-paste"]
    oracle, blobs = m["sets"]["oracle"]["mean"], m["sets"]["random"]["mean"]
    assert oracle["pixel_ap"] > 0.5, oracle
    assert oracle["pixel_ap"] > blobs["pixel_ap"] + 0.3, (oracle, blobs)
    assert oracle["pixel_f1_max"] > blobs["pixel_f1_max"] + 0.3, (oracle, blobs)
    assert oracle["au_pro"] > blobs["au_pro"] + 0.2 and oracle["pixel_auroc"] > blobs["pixel_auroc"], (oracle, blobs)
    assert m["test_set"] == {"images": 16, "normal": 8, "defective": 8, "per_defect": {"scratch": 8}}
    assert m["few_shot_real_defects"] == 4 and m["protocol"]["selection"] == "validation"
    assert not m["protocol"]["optimistic"]
    for name in m["sets"]:
        assert set(m["sets"][name]["defects"]) == {"scratch"}
        assert m["sets"][name]["seeds"]["0"]["training"]["steps"] == 60
    report = (world["root"] / "out" / "report.md").read_text()
    assert "| oracle |" in report and "| crop-paste |" in report and "DualAnoDiff paper" in report and "99.1" in report
    assert "optimistic" not in report
    for png in ("curves.png", "predictions.png"):
        with Image.open(world["root"] / "out" / png) as im:
            assert im.size[0] > 200 and im.size[1] > 100


def test_rerun_reuses_finished_detectors(world, first_run, capfd):
    weights = world["root"] / "out" / "detectors" / "oracle" / "seed0" / "detector.safetensors"
    before, stamp = _metrics(world), weights.stat().st_mtime_ns
    assert main(world["argv"]) == 0
    assert "reused detector oracle seed 0" in capfd.readouterr().err
    assert weights.stat().st_mtime_ns == stamp
    after = _metrics(world)
    assert after["sets"]["oracle"]["mean"] == before["sets"]["oracle"]["mean"]


def _auroc_ap(scores, labels):
    """Pixel AUROC (average ranks, ties halved) and AP (distinct thresholds), numpy only."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    uniq, start = np.unique(-s, return_index=True)
    ends = np.append(start[1:], len(s)) - 1
    tp, fp = np.cumsum(y)[ends], np.cumsum(~y)[ends]
    p, n = y.sum(), (~y).sum()
    tpr, fpr = np.concatenate([[0], tp / p]), np.concatenate([[0], fp / n])
    auroc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    recall = tp / p
    ap = float(np.sum(np.diff(np.concatenate([[0], recall])) * tp / (tp + fp)))
    return auroc, ap


def test_saved_maps_give_the_reported_metrics_back(world, first_run):
    maps_dir = world["root"] / "maps"
    lines = [json.loads(x) for x in (maps_dir / "maps.jsonl").read_text().splitlines()]
    assert {x["set"] for x in lines} == {"oracle", "random", "real-only", "crop-paste"}
    assert len(lines) == 4 * 16
    m = _metrics(world)
    for name in ("oracle", "random"):
        rows = [x for x in lines if x["set"] == name]
        scores = np.concatenate([np.asarray(Image.open(maps_dir / x["map"]), np.float64).ravel() / x["scale"] for x in rows])
        truth = np.concatenate([np.asarray(Image.open(maps_dir / x["ground_truth"])).ravel() > 127 for x in rows])
        with Image.open(maps_dir / rows[0]["map"]) as im:
            assert im.mode.startswith("I;16") and im.size == (32, 32)
        auroc, ap = _auroc_ap(scores, truth)
        assert abs(auroc - m["sets"][name]["mean"]["pixel_auroc"]) < 2e-3
        assert abs(ap - m["sets"][name]["mean"]["pixel_ap"]) < 2e-3
        assert all(x["image"].endswith(".png") and "test" in x["image"] for x in rows)


def test_changed_settings_are_refused_and_nothing_is_touched(world, first_run, capfd):
    out = world["root"] / "out"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    argv = [a if a != "2e-3" else "1e-3" for a in world["argv"]]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert "detector.lr: 0.002 there, 0.001 now" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_select_on_test_is_marked_optimistic(world, tmp_path):
    argv = ["evaluate", "--mvtec", str(world["cat"]), "--baselines", "real-only", "--select-on-test",
            "--output-dir", str(tmp_path / "out"), *TINY]
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["protocol"]["optimistic"] and m["protocol"]["selection"] == "test"
    assert "optimistic" in (tmp_path / "out" / "report.md").read_text()


def test_folder_test_set_end_to_end(world, tmp_path):
    """--images/--masks/--normal/--shot-images/--shot-masks instead of an MVTec category."""
    cat = world["cat"]
    dirs = {k: tmp_path / k for k in ("images", "masks", "normal", "shots", "shot_masks")}
    for d in dirs.values():
        d.mkdir()
    scratches = sorted((cat / "test" / "scratch").iterdir())
    for i, p in enumerate(scratches):
        target = dirs["shots"] if i < 3 else dirs["images"]
        shutil.copy(p, target / p.name)
        shutil.copy(cat / "ground_truth" / "scratch" / f"{p.stem}_mask.png",
                    (dirs["shot_masks"] if i < 3 else dirs["masks"]) / f"{p.stem}_mask.png")
    for p in (cat / "test" / "good").iterdir():
        shutil.copy(p, dirs["images"] / f"good_{p.name}")
    for p in (cat / "train" / "good").iterdir():
        shutil.copy(p, dirs["normal"] / p.name)
    argv = ["evaluate", "--images", str(dirs["images"]), "--masks", str(dirs["masks"]), "--normal", str(dirs["normal"]),
            "--shot-images", str(dirs["shots"]), "--shot-masks", str(dirs["shot_masks"]), "--name", "bottle",
            "--synthetic", f"oracle={world['oracle']}", "--baselines", "crop-paste", "--output-dir",
            str(tmp_path / "out"), *TINY]
    argv[argv.index("--epochs") + 1] = "1"
    assert main(argv) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["test_set"] == {"images": 17, "normal": 8, "defective": 9, "per_defect": {"defect": 9}}
    assert m["few_shot_real_defects"] == 3 and list(m["sets"]) == ["oracle", "crop-paste"]
    assert m["sets"]["oracle"]["description"]["used_pairs"] == 24


def _bad_inputs(root):
    nomask = root / "bad" / "nomask" / "bottle" / "scratch"
    shutil.copytree(world_pairs(root), nomask)
    shutil.rmtree(nomask / "mask")
    small = root / "bad" / "small" / "bottle" / "scratch"
    shutil.copytree(world_pairs(root), small)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(small / "mask" / "3.png")
    empty = root / "bad" / "empty" / "bottle" / "scratch"
    shutil.copytree(world_pairs(root), empty)
    for p in (empty / "mask").iterdir():
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(p)
    (root / "bad" / "weights").mkdir()
    elsewhere = root / "bad" / "elsewhere" / "bottle" / "scratch"  # a manifest naming files not in image/
    shutil.copytree(world_pairs(root), elsewhere)
    (elsewhere / "manifest.jsonl").write_text(json.dumps({"index": 0, "files": {"image": "b/s/image/x_0.png"}}) + "\n")


def world_pairs(root):
    return root / "oracle" / "bottle" / "scratch"


BAD = [
    ("--synthetic {bad}/nomask", "has image/ but no mask/ folder"),
    ("--synthetic {bad}/small", "small/bottle/scratch/mask/3.png is 16x16 but its image"),
    ("--synthetic {bad}/empty", "every mask is empty"),
    ("--synthetic {bad}/missing", "missing does not exist"),
    ("--synthetic {bad}/elsewhere", "manifest.jsonl lists samples x_0 but"),
    ("--synthetic {oracle} --inception-weights {bad}/weights/pt_inception.pth", "pt_inception.pth does not exist"),
    ("--synthetic {oracle} --lpips-weights {bad}/weights/vgg.pth", "needs the VGG16 backbone too: --vgg-weights"),
    ("--synthetic {oracle} --metric-weights {bad}/weights", "vgg16-397923af.pth"),
    ("--synthetic {oracle} --resolution 48", "not a multiple of 32"),
    ("--baselines none", "nothing to compare"),
    ("--synthetic {oracle} --defects crack", "--defects crack: not in"),
    ("--synthetic {oracle} --seeds 1 1", "each seed once"),
    ("--synthetic {oracle} --images {oracle}", "exclude each other"),
    ("--synthetic {oracle} --mix-real 1", "--mix-real must lie in (0, 1), got 1.0"),
    ("--mix-real --baselines real-only", "--mix-real mixes the real shots into the other sets and there is none"),
    ("--synthetic a={oracle} --placed a={oracle}", "two synthetic sets are named 'a'"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_exits_2_and_writes_nothing(world, tmp_path, capfd, extra, message):
    root = world["root"]
    if not (root / "bad").exists():
        _bad_inputs(root)
    out = tmp_path / "never"
    argv = ["evaluate", "--mvtec", str(world["cat"]), "--output-dir", str(out), *TINY]
    argv += extra.format(bad=root / "bad", oracle=world["oracle"]).split()
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_generation_metrics_join_the_table(world, tmp_path):
    """IC-LPIPS and IS from local weight files (random ones here, in the real files' layouts)."""
    import torch

    from dualanodiff_core.evaluation.inception import InceptionV3
    from dualanodiff_core.evaluation.lpips_vgg import LPIPSVGG

    folder = tmp_path / "weights"
    folder.mkdir()
    lp = LPIPSVGG()
    torch.save({f"features.{k}": v for k, v in lp.features.state_dict().items()}, folder / "vgg16-397923af.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand_like(l.weight) for i, l in enumerate(lp.lins)}, folder / "vgg.pth")
    torch.save(InceptionV3().state_dict(), folder / "weights-inception-2015-12-05-6726825d.pth")
    argv = ["evaluate", "--mvtec", str(world["cat"]), "--synthetic", f"oracle={world['oracle']}", "--max-pairs", "4",
            "--baselines", "none", "--metric-weights", str(folder), "--output-dir", str(tmp_path / "out"), *TINY]
    argv[argv.index("--epochs") + 1] = "1"
    assert main(argv) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    gen = m["sets"]["oracle"]["generation"]
    assert gen["is"]["mean"] >= 1.0 - 1e-9 and gen["ic_lpips"]["mean"] is not None
    assert sum(gen["ic_lpips"]["defects"]["scratch"]["cluster_sizes"]) == 4
    assert m["sets"]["oracle"]["description"]["used_pairs"] == 4
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| IS | IC-LPIPS |" in report


def _placed_copy(world):
    """The oracle's pairs as generate --on-images records them (its manifest names the images placed on)."""
    placed = world["root"] / "placed_set"
    if not placed.exists():
        leaf = placed / "bottle" / "scratch"
        shutil.copytree(world_pairs(world["root"]), leaf)
        lines = [dict(json.loads(x), on_images="normal", source=f"{i}.png")
                 for i, x in enumerate((leaf / "manifest.jsonl").read_text().splitlines())]
        (leaf / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    return placed


def _mixed_run(world, out, *sets):
    argv = ["evaluate", "--mvtec", str(world["cat"]), *sets, "--mix-real", "--baselines", "real-only",
            "--output-dir", str(out), *TINY]
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    for s in m["sets"].values():
        for run in s["seeds"].values():
            run["training"].pop("train_seconds")
    return m


def test_real_shots_mixed_with_generated_and_placed_sets(world, tmp_path, capsys):
    placed = _placed_copy(world)
    sets = ["--synthetic", f"oracle={world['oracle']}", "--synthetic", f"placed={placed}"]
    first = _mixed_run(world, tmp_path / "a", *sets)
    assert list(first["sets"]) == ["oracle", "placed", "real-only", "real+oracle", "real+placed"]
    kinds = {n: (s["kind"], s["description"].get("mixed_kind"), s["description"].get("real_share"))
             for n, s in first["sets"].items()}
    assert kinds == {"oracle": ("synthetic", None, None), "placed": ("placed", None, None),
                     "real-only": ("real-only", None, None), "real+oracle": ("mixed", "synthetic", 0.5),
                     "real+placed": ("mixed", "placed", 0.5)}
    out = capsys.readouterr().out
    assert out.index("| 4 real shots alone |") < out.index("| real shots + generated set oracle (50 % real) |") \
        < out.index("| real shots + placed set placed (50 % real) |") < out.index("| oracle |")
    report = (tmp_path / "a" / "report.md").read_text()
    assert report.index("Do the generated pairs help your 4 real defects?") < report.index("## Each set alone")
    # same command, same numbers (and maps)
    assert _mixed_run(world, tmp_path / "b", *sets) == first
    # a set's numbers do not depend on which other sets share the call; --placed marks a set as placed
    alone = _mixed_run(world, tmp_path / "c", "--placed", f"placed={world['oracle']}")
    assert list(alone["sets"]) == ["placed", "real-only", "real+placed"]
    for name in ("real-only", "real+placed"):
        assert alone["sets"][name]["mean"] == first["sets"][name]["mean"], name
        assert alone["sets"][name]["seeds"] == first["sets"][name]["seeds"], name


def test_mixing_draws_the_real_share_of_every_batch():
    import torch

    from dualanodiff_core.evaluation.sources import MixedPool

    class Constant:
        def __init__(self, value):
            self.value = value

        def draw_labelled(self, n, gen):
            return torch.full((n, 3, 2, 2), self.value), torch.ones(n, 1, 2, 2), [str(self.value)] * n

    pool = MixedPool(Constant(1.0), Constant(0.0), 0.3)
    gen = torch.Generator().manual_seed(0)
    counts = [int(pool.draw(10, gen)[0][:, 0, 0, 0].sum()) for _ in range(400)]
    assert set(counts) == {3}  # 0.3 x 10 is whole: exactly 3 real in every batch
    counts = [int(pool.draw(8, gen)[0][:, 0, 0, 0].sum()) for _ in range(2000)]
    assert set(counts) == {2, 3} and abs(sum(counts) / (8 * 2000) - 0.3) < 0.01  # 2.4 on average
