"""Generation metrics without downloads: the networks load files in the layouts the real weights use
(written here from random weights), the scores follow their formulas, and missing files are named."""
import math

import numpy as np
import pytest
import torch

from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.evaluation import generation_metrics as G
from dualanodiff_core.evaluation.inception import InceptionV3, inception_score, load_inception, resize_tf1
from dualanodiff_core.evaluation.lpips_vgg import LPIPSVGG, load_lpips

# names and shapes of the real files (torchvision vgg16, lpips v0.1 vgg.pth, the 2015 Inception port)
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
INCEPTION_KEYS = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
                  "Mixed_6e.branch7x7dbl_5.bn.running_var": (192,), "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
                  "fc.weight": (1008, 2048), "fc.bias": (1008,)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric_weights")
    torch.manual_seed(0)
    lp = LPIPSVGG()
    vgg = {f"features.{k}": v for k, v in lp.features.state_dict().items()}
    vgg.update({"classifier.0.weight": torch.zeros(2, 2)})  # a full torchvision file has a classifier too
    torch.save(vgg, root / "vgg16-397923af.pth")
    lins = {f"lin{i}.model.1.weight": torch.rand_like(l.weight) for i, l in enumerate(lp.lins)}
    torch.save(lins, root / "vgg.pth")
    inc = InceptionV3()
    torch.save({k: v for k, v in inc.state_dict().items() if not k.endswith("num_batches_tracked")},
               root / "pt_inception-2015-12-05-6726825d.pth")
    return root


def test_vgg_layout_is_torchvisions():
    keys = set(LPIPSVGG().features.state_dict())
    assert keys == {f"{i}.{p}" for i in VGG_CONVS for p in ("weight", "bias")}


def test_inception_layout_is_the_ports():
    state = InceptionV3().state_dict()
    for key, shape in INCEPTION_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert sum(v.numel() for k, v in state.items() if not k.startswith("fc")) > 21_000_000


def test_lpips_is_a_distance_and_matches_its_definition(weights):
    model = load_lpips(weights / "vgg16-397923af.pth", weights / "vgg.pth")
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    d = model(x, y)
    assert d.shape == (2,) and torch.all(d > 0)
    assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-6)
    assert torch.allclose(d, model(y, x), atol=1e-6)
    # by hand: scale, VGG taps, unit-normalise over channels, weight, spatial mean, sum
    h = (x - model.shift) / model.scale
    g = (y - model.shift) / model.scale
    total = torch.zeros(2)
    k = 0
    for i, layer in enumerate(model.features):
        h, g = layer(h), layer(g)
        if i in (3, 8, 15, 22, 29):
            nh = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ng = g / (g.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = model.lins[k].weight.view(1, -1, 1, 1)
            total += ((nh - ng) ** 2 * w).sum(1).mean(dim=(1, 2))
            k += 1
    assert torch.allclose(d, total, rtol=1e-4)


def test_ic_lpips_clusters_by_nearest_centre_and_averages_pairs(weights):
    model = load_lpips(weights / "vgg16-397923af.pth", weights / "vgg.pth")
    g = torch.Generator().manual_seed(0)
    centres = [torch.full((3, 32, 32), v, dtype=torch.uint8) for v in (20, 230)]
    near = [(c.int() + torch.randint(-8, 8, c.shape, generator=g)).clamp(0, 255).to(torch.uint8)
            for c in centres for _ in range(3)]
    out = G.ic_lpips(model, centres, near, "cpu", size=64)
    assert out["cluster_sizes"] == [3, 3]
    from dualanodiff_core.evaluation.lpips_vgg import to_lpips_input
    expected = []
    for members in (near[:3], near[3:]):
        x = to_lpips_input(torch.stack(members), 64)
        expected.append(np.mean([float(model(x[i:i + 1], x[j:j + 1])) for i in range(3) for j in range(i + 1, 3)]))
    assert abs(out["value"] - np.mean(expected)) < 1e-5
    single = G.ic_lpips(model, centres, near[:1], "cpu", size=64)
    assert single["value"] is None  # no cluster with two members


def test_inception_score_matches_its_formula():
    logits = torch.randn(40, 7)
    mean, std = inception_score(logits, splits=4, seed=1)
    order = np.random.RandomState(1).permutation(40)
    p = torch.softmax(logits[order].double(), 1).numpy()
    scores = []
    for i in range(4):
        part = p[i * 10:(i + 1) * 10]
        q = part.mean(0)
        scores.append(math.exp(np.mean([(r * (np.log(r) - np.log(q))).sum() for r in part])))
    assert abs(mean - np.mean(scores)) < 1e-9 and abs(std - np.std(scores)) < 1e-9
    uniform = inception_score(torch.zeros(20, 5), splits=2)
    assert abs(uniform[0] - 1.0) < 1e-12


def test_inception_runs_on_uint8_images(weights):
    model = load_inception(weights / "pt_inception-2015-12-05-6726825d.pth")
    logits = model.logits_unbiased(torch.randint(0, 255, (2, 3, 64, 48), dtype=torch.uint8))
    assert logits.shape == (2, 1008) and torch.isfinite(logits).all()


def test_tf1_resize_samples_without_half_pixel_offset():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    y = resize_tf1(x, 8)
    assert torch.allclose(y[0, 0, 0], torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3]))


def test_weights_are_found_in_a_folder_and_missing_ones_are_named(weights, tmp_path):
    found = G.resolve_weights(None, None, None, weights)
    assert found["lpips"] == (weights / "vgg16-397923af.pth", weights / "vgg.pth")
    assert found["inception"] == weights / "pt_inception-2015-12-05-6726825d.pth"
    assert G.resolve_weights(None, None, None, None) == {}
    with pytest.raises(DualAnoDiffError, match="--vgg-weights vgg16-397923af.pth"):
        G.resolve_weights(weights / "vgg.pth", None, None, None)
    with pytest.raises(DualAnoDiffError, match="--lpips-weights vgg.pth"):
        G.resolve_weights(None, weights / "vgg16-397923af.pth", None, None)
    with pytest.raises(DualAnoDiffError, match="missing.pth does not exist"):
        G.resolve_weights(None, None, tmp_path / "missing.pth", None)
    with pytest.raises(DualAnoDiffError, match="holds none of the metric weight files"):
        G.resolve_weights(None, None, None, tmp_path)
    torch.save({"something": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(DualAnoDiffError, match="lacks Conv2d_1a_3x3"):
        load_inception(tmp_path / "wrong.pth")
    with pytest.raises(DualAnoDiffError, match="lacks lin0.model.1.weight"):
        load_lpips(weights / "vgg16-397923af.pth", tmp_path / "wrong.pth")
    with pytest.raises(DualAnoDiffError, match="lacks features.0.weight"):
        load_lpips(tmp_path / "wrong.pth", weights / "vgg.pth")


def test_set_metrics_per_defect_type(weights):
    models = G.load_models(G.resolve_weights(None, None, None, weights), "cpu")
    g = torch.Generator().manual_seed(1)
    gen = {"scratch": [torch.randint(0, 255, (3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(4)]}
    real = {"scratch": [torch.randint(0, 255, (3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(2)]}
    out = G.set_generation_metrics(models, gen, real, "cpu", lpips_size=64)
    assert set(out) == {"ic_lpips", "is"}
    assert out["is"]["mean"] >= 1.0 - 1e-9 and "scratch" in out["is"]["defects"]
    assert out["ic_lpips"]["defects"]["scratch"]["cluster_sizes"] and sum(out["ic_lpips"]["defects"]["scratch"]["cluster_sizes"]) == 4
