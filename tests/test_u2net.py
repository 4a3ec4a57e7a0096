"""U-2-Net: the official weight layout, loading (and every refusal), saliency and the BCM background."""
import pytest
import torch
from safetensors.torch import save_file

from dualanodiff_core import DualAnoDiffError
from dualanodiff_core.masks.u2net import (
    U2NET, U2NETP, background_from_saliency, load_u2net, saliency,
)

# --- the official layout, written out independently from xuebinqin/U-2-Net model/u2net.py ----------
# RSU blocks as (kind, in_ch, mid_ch, out_ch); kind = height, "4F" = RSU4F.
OFFICIAL = {
    "u2net": {
        "stages": {"stage1": (7, 3, 32, 64), "stage2": (6, 64, 32, 128), "stage3": (5, 128, 64, 256),
                   "stage4": (4, 256, 128, 512), "stage5": ("4F", 512, 256, 512), "stage6": ("4F", 512, 256, 512),
                   "stage5d": ("4F", 1024, 256, 512), "stage4d": (4, 1024, 128, 256),
                   "stage3d": (5, 512, 64, 128), "stage2d": (6, 256, 32, 64), "stage1d": (7, 128, 16, 64)},
        "sides": [64, 64, 128, 256, 512, 512],
        "params": 44_009_869,
    },
    "u2netp": {
        "stages": {"stage1": (7, 3, 16, 64), **{f"stage{i}": (h, 64, 16, 64) for i, h in
                                                 [(2, 6), (3, 5), (4, 4), (5, "4F"), (6, "4F")]},
                   "stage5d": ("4F", 128, 16, 64), "stage4d": (4, 128, 16, 64), "stage3d": (5, 128, 16, 64),
                   "stage2d": (6, 128, 16, 64), "stage1d": (7, 128, 16, 64)},
        "sides": [64] * 6,
        "params": 1_131_181,
    },
}


def _official_shapes(variant):
    """{key: shape} of the official state dict, from the block table above."""
    shapes = {}

    def rebnconv(name, cin, cout):
        shapes[f"{name}.conv_s1.weight"] = (cout, cin, 3, 3)
        shapes[f"{name}.conv_s1.bias"] = (cout,)
        for b in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn_s1.{b}"] = (cout,)
        shapes[f"{name}.bn_s1.num_batches_tracked"] = ()

    cfg = OFFICIAL[variant]
    for stage, (kind, cin, mid, cout) in cfg["stages"].items():
        height = 4 if kind == "4F" else kind
        rebnconv(f"{stage}.rebnconvin", cin, cout)
        rebnconv(f"{stage}.rebnconv1", cout, mid)
        for i in range(2, height + 1):
            rebnconv(f"{stage}.rebnconv{i}", mid, mid)
        for i in range(height - 1, 1, -1):
            rebnconv(f"{stage}.rebnconv{i}d", 2 * mid, mid)
        rebnconv(f"{stage}.rebnconv1d", 2 * mid, cout)
    for i, ch in enumerate(cfg["sides"], start=1):
        shapes[f"side{i}.weight"], shapes[f"side{i}.bias"] = (1, ch, 3, 3), (1,)
    shapes["outconv.weight"], shapes["outconv.bias"] = (1, 6, 1, 1), (1,)
    return shapes


def _n_params(shapes):
    return sum(torch.Size(s).numel() for k, s in shapes.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


@pytest.mark.parametrize("variant,cls", [("u2net", U2NET), ("u2netp", U2NETP)])
def test_state_dict_is_exactly_the_official_layout(variant, cls):
    expected = _official_shapes(variant)
    assert _n_params(expected) == OFFICIAL[variant]["params"]
    assert len(expected) == 798  # 112 REBNCONV x 7 entries + 6 sides x 2 + outconv x 2
    model = cls()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL[variant]["params"]


def test_spot_check_official_keys():
    full, small = U2NET().state_dict(), U2NETP().state_dict()
    assert full["stage1.rebnconvin.conv_s1.weight"].shape == (64, 3, 3, 3)
    assert full["stage4d.rebnconvin.conv_s1.weight"].shape == (256, 1024, 3, 3)
    assert full["stage5d.rebnconv1d.conv_s1.weight"].shape == (512, 512, 3, 3)
    assert full["stage1d.rebnconv6d.conv_s1.weight"].shape == (16, 32, 3, 3)
    assert full["stage6.rebnconv4.bn_s1.running_var"].shape == (256,)
    assert full["side3.weight"].shape == (1, 128, 3, 3)
    assert small["stage1.rebnconv7.conv_s1.weight"].shape == (16, 16, 3, 3)
    assert small["stage5d.rebnconvin.conv_s1.weight"].shape == (64, 128, 3, 3)
    assert "stage5.rebnconv5.conv_s1.weight" not in small  # RSU4F has 4 levels


def test_dilations_follow_the_official_blocks():
    m = U2NETP()
    assert [getattr(m.stage5, f"rebnconv{i}").conv_s1.dilation[0] for i in range(1, 5)] == [1, 2, 4, 8]
    assert [getattr(m.stage5, f"rebnconv{i}d").conv_s1.dilation[0] for i in (3, 2, 1)] == [4, 2, 1]
    assert [getattr(m.stage1, f"rebnconv{i}").conv_s1.dilation[0] for i in range(1, 8)] == [1] * 6 + [2]
    assert all(getattr(m.stage1, f"rebnconv{i}d").conv_s1.dilation[0] == 1 for i in range(1, 7))


def test_forward_returns_seven_probability_maps_for_odd_sizes():
    out = U2NETP().eval()(torch.rand(1, 3, 50, 70))
    assert len(out) == 7
    assert all(o.shape == (1, 1, 50, 70) and 0 <= o.min() and o.max() <= 1 for o in out)


# --- loading --------------------------------------------------------------------------------------

def _random_state(cls, seed=0):
    torch.manual_seed(seed)
    m = cls()
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return m.eval(), m.state_dict()


@pytest.fixture(scope="module")
def small():
    return _random_state(U2NETP)


def _same_outputs(a, b):
    x = torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return all(torch.equal(p, q) for p, q in zip(a(x), b(x)))


def test_pth_and_safetensors_round_trip(tmp_path, small):
    model, sd = small
    torch.save(sd, tmp_path / "u2netp.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "u2netp.safetensors"))
    for name in ("u2netp.pth", "u2netp.safetensors"):
        loaded = load_u2net(tmp_path / name)
        assert type(loaded) is U2NETP and not loaded.training
        assert _same_outputs(model, loaded)


def test_full_variant_is_detected(tmp_path):
    _, sd = _random_state(U2NET)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, tmp_path / "u2net.pth")
    loaded = load_u2net(str(tmp_path / "u2net.pth"))
    assert type(loaded) is U2NET
    assert next(loaded.parameters()).dtype == torch.float32
    assert torch.equal(loaded.side6.weight, sd["side6.weight"].half().float())


def test_wrapped_and_old_style_dicts_load(tmp_path, small):
    model, sd = small
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dataparallel.pth")
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pth")
    # files written before torch 0.4.1 have no num_batches_tracked buffers
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    for name in ("dataparallel.pth", "wrapped.pth", "old.pth"):
        assert _same_outputs(model, load_u2net(tmp_path / name))


def test_dtype_and_device_arguments(tmp_path, small):
    torch.save(small[1], tmp_path / "u2netp.pth")
    m = load_u2net(tmp_path / "u2netp.pth", device="cpu", dtype=torch.bfloat16)
    assert next(m.parameters()).dtype == torch.bfloat16
    sal = saliency(m, torch.rand(1, 3, 40, 40), size=64)
    assert sal.dtype == torch.float32 and sal.shape == (1, 1, 40, 40)


def test_missing_file(tmp_path):
    with pytest.raises(DualAnoDiffError, match=r"not found: .*nothere\.pth.*u2net\.pth"):
        load_u2net(tmp_path / "nothere.pth")


def test_onnx_is_refused_with_what_to_get(tmp_path):
    (tmp_path / "u2net.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(DualAnoDiffError, match=r"u2net\.onnx: ONNX .*not supported.*u2net\.pth.*u2netp\.pth"):
        load_u2net(tmp_path / "u2net.onnx")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, small, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save(small[1], full)
    else:
        save_file({k: v.contiguous() for k, v in small[1].items()}, str(full))
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DualAnoDiffError, match=r"cut\..*truncated"):
        load_u2net(cut)


def test_other_state_dicts_are_described(tmp_path):
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(2, 3, 16, 16)}, tmp_path / "sam.pth")
    with pytest.raises(DualAnoDiffError, match=r"sam\.pth is not a U-2-Net state dict: .*Segment Anything"):
        load_u2net(tmp_path / "sam.pth")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(DualAnoDiffError, match=r"not a U-2-Net state dict: .*1 keys, e\.g\. 'foo\.weight'"):
        load_u2net(tmp_path / "other.pth")
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(DualAnoDiffError, match=r"list\.pth is not a U-2-Net state dict: it holds a list"):
        load_u2net(tmp_path / "list.pth")


def test_pickled_objects_are_not_unpickled(tmp_path):
    torch.save(U2NETP(), tmp_path / "whole_model.pth")  # a whole module, not a state dict
    with pytest.raises(DualAnoDiffError, match=r"whole_model\.pth holds pickled Python objects"):
        load_u2net(tmp_path / "whole_model.pth")


def test_mismatched_shapes_name_the_variant(tmp_path, small):
    sd = dict(small[1])
    sd["side1.weight"] = torch.zeros(1, 32, 3, 3)
    torch.save(sd, tmp_path / "odd.pth")
    with pytest.raises(DualAnoDiffError, match=r"odd\.pth does not match the official U2NETP layout"):
        load_u2net(tmp_path / "odd.pth")


# --- saliency -------------------------------------------------------------------------------------

def test_saliency_shape_and_range_for_non_square_images(small):
    model, _ = small
    images = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    sal = saliency(model, images, size=32)
    assert sal.shape == (2, 1, 37, 53)
    assert sal.min() >= 0 and sal.max() <= 1
    assert sal.amax(dim=(1, 2, 3)).min() > 0.9  # min-max stretched


class _Stub(torch.nn.Module):
    """Returns a fixed d0 in the official output format and records its input."""

    def __init__(self, d0):
        super().__init__()
        self.d0, self.seen = d0, None

    def forward(self, x):
        self.seen = x
        d0 = self.d0.expand(x.shape[0], -1, -1, -1)
        return (d0,) + (torch.zeros_like(d0),) * 6


def test_saliency_follows_the_official_preprocessing_and_normalisation():
    d0 = torch.full((1, 1, 320, 320), 0.1)
    d0[..., 80:240, 160:320] = 0.9
    stub = _Stub(d0)
    images = torch.full((1, 3, 64, 32), 0.5)
    sal = saliency(stub, images)
    # resized to 320, divided by the image maximum (0.5 -> 1.0), ImageNet mean/std
    expected_in = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert stub.seen.shape == (1, 3, 320, 320)
    assert torch.allclose(stub.seen[0, :, 5, 5], expected_in, atol=1e-5)
    # min-max normalised (0.1 -> 0, 0.9 -> 1) and resized back to 64x32
    assert sal.shape == (1, 1, 64, 32)
    assert torch.allclose(sal[0, 0, 20:44, 20:32], torch.ones(24, 12))
    assert torch.allclose(sal[0, 0, :14], torch.zeros(14, 32))
    assert torch.allclose(sal[0, 0, :, :14], torch.zeros(64, 14))


def test_floor_guard_returns_zeros_instead_of_stretched_noise(small):
    images = torch.rand(2, 3, 40, 30, generator=torch.Generator().manual_seed(2))
    flat = U2NETP().eval()
    with torch.no_grad():
        for p in flat.parameters():
            p.zero_()  # every output is sigmoid(0) = 0.5: a flat map
    assert torch.count_nonzero(saliency(flat, images, size=64)) == 0

    dim = U2NETP().eval()
    dim.load_state_dict(small[1])
    with torch.no_grad():
        dim.outconv.bias.fill_(-5.0)  # d0 below the floor everywhere, but not flat
        raw = dim(torch.nn.functional.interpolate(images, size=(16, 16)))[0]
    assert raw.max() < 0.2 and raw.max() - raw.min() > 1e-4
    assert torch.count_nonzero(saliency(dim, images, size=16)) == 0
    assert saliency(dim, images, size=16, floor=0.0).amax() > 0.9  # what the guard prevents


def test_floor_is_per_image():
    d0 = torch.zeros(2, 1, 320, 320)
    d0[0, :, :100] = 0.8
    d0[1, :, :100] = 0.1  # below the default floor of 0.2

    class Two(torch.nn.Module):
        def forward(self, x):
            return d0

    sal = saliency(Two(), torch.rand(2, 3, 32, 32))
    assert sal[0].max() == 1 and torch.count_nonzero(sal[1]) == 0


def test_saliency_rejects_comfy_layout():
    with pytest.raises(DualAnoDiffError, match=r"\(B,3,H,W\)"):
        saliency(_Stub(torch.zeros(1, 1, 320, 320)), torch.rand(1, 32, 32, 3))


def test_background_from_saliency():
    images = torch.rand(1, 3, 16, 16)
    sal = torch.zeros(1, 1, 16, 16)
    sal[..., 4:8, 4:8] = 1.0
    sal[..., 8, 4:8] = 0.5
    bg = background_from_saliency(images, sal)
    assert torch.count_nonzero(bg[..., 4:8, 4:8]) == 0
    assert torch.allclose(bg[..., 8, 4:8], images[..., 8, 4:8] * 0.5)
    assert torch.equal(bg[..., :4, :], images[..., :4, :])
    small_sal = torch.nn.functional.interpolate(sal, size=(8, 8), mode="nearest")
    assert background_from_saliency(images, small_sal).shape == images.shape
