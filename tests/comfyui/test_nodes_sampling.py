"""Loader and sampling nodes in graphs run by ComfyUI's real executor (tiny CPU models)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import harness
from dualanodiff_core import load_dual_unet
from paired_reference import interleave_rows, reference_pairs
from tiny_models import tiny_unet
from workflow_fixtures import (
    FakeClip,
    ForeignAttentionReplace,
    StubVAE,
    pack_module,
    register_extra_harness_nodes,
    tiny_controlnet,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def folders(pack):
    import folder_paths

    register_extra_harness_nodes()
    harness.add_harness_node("HarnessForeignReplace", ForeignAttentionReplace)
    pack_module(pack, "nodes.model_folders").register_model_folders()
    ckpt_dir = Path(folder_paths.get_folder_paths("dualanodiff")[0])
    write_checkpoint(ckpt_dir, "plain.safetensors")
    write_checkpoint(ckpt_dir, "bcm.safetensors", bcm=True)
    folder_paths.filename_list_cache.clear()
    return ckpt_dir


STEPS, CFG, SEED = 3, 2.5, 7


def _cond(seed, rows=1):
    gen = torch.Generator().manual_seed(seed)
    return harness.register(harness.conditioning(torch.randn(rows, 77, 32, generator=gen)))


def _latents(seed, n, size=8):
    return torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def keys(folders):
    return {
        "model": harness.register(harness.comfy_model_from_diffusers(tiny_unet(seed=0))),
        "clip": harness.register(FakeClip()),
        "pos_g": _cond(1), "pos_a": _cond(2), "neg": _cond(3),
    }


def _prompt(keys, name):
    return harness.OBJECTS[keys[name]][0][0]


@pytest.fixture(scope="module")
def dual(folders):
    """The diffusers path: the same tiny base model and checkpoint through load_dual_unet."""
    return load_dual_unet(tiny_unet(seed=0), folders / "plain.safetensors")


def _reference(keys, dual, latents, **prompts):
    """Independent expected pairs (2N, 4, 8, 8) for interleaved initial latents (see paired_reference)."""
    p = {name: _prompt(keys, key) for name, key in (("global", "pos_g"), ("anomaly", "pos_a"), ("negative", "neg"))}
    p.update(prompts)
    return reference_pairs(dual, latents, SEED, STEPS, CFG, p["global"], p["anomaly"], p["negative"])


def assert_same_sampling(actual, expected, rel=5e-6):
    """Equal up to float noise: ComfyUI and diffusers, or different batch sizes, round differently; the
    error grows with the latents' scale (~300 here) and was measured below 6e-7 of it. A swapped,
    dropped or leaked row differs by O(1)."""
    assert actual.shape == expected.shape
    err, scale = (actual - expected).abs().max().item(), expected.abs().max().item()
    assert err <= rel * scale, f"max abs difference {err:.3e} > {rel:.0e} x {scale:.1f}"


def assert_changed(actual, unchanged, at_least=0.1):
    """Measurably different: at least ~70x the tolerance of assert_same_sampling."""
    diff = (actual - unchanged).abs().max().item()
    assert diff > at_least, f"max abs difference {diff:.3e}, expected a change of more than {at_least}"


def _base_graph(keys, checkpoint="plain.safetensors", n_pairs=2, model_node=None, saim=1.0, latent=None):
    return {
        "m": {"class_type": "HarnessModel", "inputs": {"key": keys["model"]}},
        "c": {"class_type": "HarnessClip", "inputs": {"key": keys["clip"]}},
        "load": {"class_type": "DualAnoDiffLoader", "inputs": {
            "model": model_node or ["m", 0], "clip": ["c", 0], "checkpoint": checkpoint, "strength_global": 1.0,
            "strength_anomaly": 1.0, "strength_saim": saim, "strength_clip": 1.0}},
        "pg": {"class_type": "HarnessConditioning", "inputs": {"key": keys["pos_g"]}},
        "pa": {"class_type": "HarnessConditioning", "inputs": {"key": keys["pos_a"]}},
        "ng": {"class_type": "HarnessConditioning", "inputs": {"key": keys["neg"]}},
        "lat": {"class_type": "HarnessLatent", "inputs": {"key": harness.register(
            {"samples": torch.zeros(n_pairs, 4, 8, 8) if latent is None else latent})}},
    }


def _pair_latent_nodes(graph, latent_global, latent_anomaly):
    """Pair Latents over two distinct N-image LATENTs: node "pl"."""
    graph["lg"] = {"class_type": "HarnessLatent", "inputs": {"key": harness.register({"samples": latent_global})}}
    graph["la"] = {"class_type": "HarnessLatent", "inputs": {"key": harness.register({"samples": latent_anomaly})}}
    graph["pl"] = {"class_type": "DualAnoDiffPairLatents", "inputs": {"latent_global": ["lg", 0], "latent_anomaly": ["la", 0]}}
    return graph


def _paired_sampler(graph, seed=SEED, model=("load", 0), positive_global=("pg", 0), positive_anomaly=("pa", 0),
                    negative=("ng", 0), latent=("lat", 0), background=None, cfg=CFG, steps=STEPS):
    graph["ks"] = {"class_type": "DualAnoDiffPairedKSampler", "inputs": {
        "model": list(model), "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
        "positive_global": list(positive_global), "positive_anomaly": list(positive_anomaly), "negative": list(negative),
        "latent_image": list(latent), "denoise": 1.0}}
    if background:
        graph["ks"]["inputs"]["background"] = list(background)
    graph["cg"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["ks", 0], "key": "global"}}
    graph["ca"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["ks", 1], "key": "anomaly"}}
    return graph


def _pairs(run):
    """The captured (global, anomaly) LATENTs of a run, interleaved again by hand: (2N, 4, 8, 8)."""
    return interleave_rows(run.captured["global"]["samples"], run.captured["anomaly"]["samples"])


@pytest.mark.parametrize("n_pairs", [1, 3])
def test_paired_ksampler_matches_the_diffusers_reference(keys, dual, n_pairs):
    """Three distinct prompts and distinct initial latents on every row: a swap, leak or merge of rows,
    or a prompt dropped, fails it."""
    lat_g, lat_a = _latents(10, n_pairs), _latents(11, n_pairs)
    run = harness.run_graph(_paired_sampler(_pair_latent_nodes(_base_graph(keys, n_pairs=n_pairs), lat_g, lat_a),
                                            latent=("pl", 0)))
    expected = _reference(keys, dual, interleave_rows(lat_g, lat_a))
    assert_same_sampling(_pairs(run), expected)
    # the reference itself tells the branches and prompts apart by far more than the tolerance
    for changed in (_reference(keys, dual, interleave_rows(lat_g, lat_a), **{"global": _prompt(keys, "pos_a"), "anomaly": _prompt(keys, "pos_g")}),
                    _reference(keys, dual, interleave_rows(lat_a, lat_g)),
                    _reference(keys, dual, interleave_rows(lat_g, lat_a), negative=_prompt(keys, "pos_g"))):
        assert_changed(changed[0::2], expected[0::2])
        assert_changed(changed[1::2], expected[1::2])


def test_placement_gives_the_latents_of_the_cli_sampler(keys, dual):
    """On the user's image: the Paired KSampler with Set Latent Noise Mask on the global LATENT and the
    mid-grey canvas LATENT with the same mask on the anomaly one (the place_on_image workflow) gives the
    latents that `generate --on-images --scheduler euler-simple` samples (runtime.sampling.sample_pairs
    with keep and keep_anomaly), for the same image, region and seed."""
    from dualanodiff_core.formats.base_model import BUNDLED_CONFIG, _read_json
    from dualanodiff_core.generation.placement import inner_keep_mask, keep_mask
    from dualanodiff_core.runtime.sampling import make_scheduler, sample_pairs

    steps, scale = 4, 0.18215
    image, canvas = _latents(40, 1) * 4, _latents(41, 1) * 4  # scaled latents, as the CLI holds them
    region = torch.zeros(1, 1, 64, 64)
    region[..., 16:40, 24:48] = 1  # on whole latent cells: the CLI's cell masks and ComfyUI's resized mask agree
    graph = _base_graph(keys)
    graph["lg"] = {"class_type": "HarnessLatent", "inputs": {"key": harness.register({"samples": image / scale, "noise_mask": region})}}
    graph["la"] = {"class_type": "HarnessLatent", "inputs": {"key": harness.register({"samples": canvas / scale, "noise_mask": region})}}
    graph["pl"] = {"class_type": "DualAnoDiffPairLatents", "inputs": {"latent_global": ["lg", 0], "latent_anomaly": ["la", 0]}}
    comfy = _pairs(harness.run_graph(_paired_sampler(graph, latent=("pl", 0), steps=steps))) * scale

    prompts = {name: _prompt(keys, name) for name in ("pos_g", "pos_a", "neg")}
    cli = sample_pairs(dual, make_scheduler("euler-simple", _read_json(BUNDLED_CONFIG / "scheduler" / "scheduler_config.json")),
                       torch.cat([prompts["pos_g"], prompts["pos_a"]]), torch.cat([prompts["neg"], prompts["neg"]]),
                       [torch.Generator().manual_seed(SEED)], (8, 8), steps=steps, guidance=CFG,
                       keep=(image, keep_mask(region > 0, (8, 8), margin=0)),
                       keep_anomaly=(canvas, inner_keep_mask(region > 0, (8, 8))))
    assert_same_sampling(comfy, cli)
    outside = keep_mask(region > 0, (8, 8), margin=0)[0, 0] > 0
    assert torch.equal(cli[0][:, outside], image[0][:, outside]) and torch.equal(cli[1][:, outside], canvas[0][:, outside])
    assert_changed(cli[0][:, ~outside], image[0][:, ~outside])


def test_unpaired_latent_starts_both_branches_from_each_image(keys, dual):
    lat = _latents(12, 2)
    run = harness.run_graph(_paired_sampler(_base_graph(keys, latent=lat)))
    assert_same_sampling(_pairs(run), _reference(keys, dual, interleave_rows(lat, lat)))


def test_pairs_are_independent_of_each_other(keys):
    """Pair 0 sampled alone with pair 0's noise equals pair 0 of a 3-pair batch: no coupling across pairs."""
    import comfy.sample

    full = harness.run_graph(_paired_sampler(_base_graph(keys, n_pairs=3)))
    noise = comfy.sample.prepare_noise(torch.zeros(6, 4, 8, 8), SEED)
    graph = _base_graph(keys)
    graph["cap"] = {"class_type": "HarnessCaptureModel", "inputs": {"value": ["load", 0], "key": "m"}}
    patched = harness.run_graph(graph).captured["m"]
    positive = [[torch.cat([_prompt(keys, "pos_g"), _prompt(keys, "pos_a")]), {}]]  # rows [global; anomaly], by hand
    out = comfy.sample.sample(patched, noise[:2], STEPS, CFG, "euler", "simple", positive, harness.OBJECTS[keys["neg"]],
                              torch.zeros(2, 4, 8, 8), seed=SEED)
    assert_same_sampling(out, _pairs(full)[:2])


def _stock_graph(keys, sampler, latent_global, latent_anomaly):
    graph = _pair_latent_nodes(_base_graph(keys, n_pairs=2), latent_global, latent_anomaly)
    graph["pc"] = {"class_type": "DualAnoDiffPairConditioning", "inputs": {"positive_global": ["pg", 0], "positive_anomaly": ["pa", 0]}}
    common = {"model": ["load", 0], "positive": ["pc", 0], "negative": ["ng", 0], "latent_image": ["pl", 0],
              "cfg": CFG, "sampler_name": "euler", "scheduler": "simple", "steps": STEPS}
    if sampler == "KSampler":
        graph["ks"] = {"class_type": "KSampler", "inputs": {**common, "seed": SEED, "denoise": 1.0}}
    elif sampler == "KSamplerAdvanced":
        graph["ks"] = {"class_type": "KSamplerAdvanced", "inputs": {**common, "add_noise": "enable", "noise_seed": SEED,
                                                                    "start_at_step": 0, "end_at_step": 10000,
                                                                    "return_with_leftover_noise": "disable"}}
    else:
        graph.update({
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
            "guider": {"class_type": "CFGGuider", "inputs": {"model": ["load", 0], "positive": ["pc", 0], "negative": ["ng", 0], "cfg": CFG}},
            "sel": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "sig": {"class_type": "BasicScheduler", "inputs": {"model": ["load", 0], "scheduler": "simple", "steps": STEPS, "denoise": 1.0}},
            "ks": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sel", 0], "sigmas": ["sig", 0], "latent_image": ["pl", 0]}},
        })
    graph["split"] = {"class_type": "DualAnoDiffSplitLatents", "inputs": {"latent": ["ks", 0]}}
    graph["cg"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["split", 0], "key": "global"}}
    graph["ca"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["split", 1], "key": "anomaly"}}
    return graph


@pytest.mark.parametrize("sampler", ["KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced"])
def test_stock_samplers_with_pair_helpers_match_the_diffusers_reference(keys, dual, sampler):
    import nodes

    if sampler == "SamplerCustomAdvanced":
        harness.load_extra_nodes("nodes_custom_sampler")
        if "SamplerCustomAdvanced" not in nodes.NODE_CLASS_MAPPINGS:
            pytest.skip("SamplerCustomAdvanced does not exist in this ComfyUI copy (the March-2024 copy predates it; it has only SamplerCustom)")
    lat_g, lat_a = _latents(10, 2), _latents(11, 2)
    stock = harness.run_graph(_stock_graph(keys, sampler, lat_g, lat_a))
    assert_same_sampling(_pairs(stock), _reference(keys, dual, interleave_rows(lat_g, lat_a)))


def test_denoise_below_one_reaches_the_sampler(keys):
    """Paired KSampler at denoise 0.5 equals stock KSampler with the pair helpers at 0.5, and differs from 1.0."""
    lat_g, lat_a = _latents(10, 2), _latents(11, 2)

    def paired(denoise):
        graph = _paired_sampler(_pair_latent_nodes(_base_graph(keys, n_pairs=2), lat_g, lat_a), latent=("pl", 0))
        graph["ks"]["inputs"]["denoise"] = denoise
        return _pairs(harness.run_graph(graph))

    stock = _stock_graph(keys, "KSampler", lat_g, lat_a)
    stock["ks"]["inputs"]["denoise"] = 0.5
    half = paired(0.5)
    assert_same_sampling(half, _pairs(harness.run_graph(stock)))
    assert_changed(half, paired(1.0))


def test_odd_batch_gets_a_clear_error(keys):
    graph = _base_graph(keys, n_pairs=3)
    graph["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["load", 0], "positive": ["pg", 0], "negative": ["ng", 0], "latent_image": ["lat", 0], "seed": 1,
        "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    graph["cap"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["ks", 0], "key": "x"}}
    with pytest.raises(AssertionError, match="3 rows.*interleaved"):
        harness.run_graph(graph)


def test_missing_branch_is_refused(keys):
    graph = _paired_sampler(_base_graph(keys))
    del graph["ks"]["inputs"]["positive_anomaly"]
    ok, errors = harness.validate(graph)
    assert not ok and "ks" in errors["node_errors"]
    graph = _paired_sampler(_base_graph(keys))
    graph["pa"] = {"class_type": "HarnessConditioning", "inputs": {"key": _cond(5, rows=2)}}
    with pytest.raises(AssertionError, match="one prompt per branch"):
        harness.run_graph(graph)


def test_paired_ksampler_refuses_a_plain_model(keys):
    graph = _paired_sampler(_base_graph(keys), model=("m", 0))
    with pytest.raises(AssertionError, match="needs a MODEL from"):
        harness.run_graph(graph)


def _background_nodes(graph, with_mask=True):
    image = torch.full((1, 64, 64, 3), 0.7)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    graph["img"] = {"class_type": "HarnessImage", "inputs": {"key": harness.register(image)}}
    graph["vae"] = {"class_type": "HarnessVae", "inputs": {"key": harness.register(StubVAE())}}
    graph["mask"] = {"class_type": "HarnessMask", "inputs": {"key": harness.register(mask)}}
    graph["bg"] = {"class_type": "DualAnoDiffBackground", "inputs": {"image": ["img", 0], "vae": ["vae", 0]}}
    if with_mask:
        graph["bg"]["inputs"]["mask"] = ["mask", 0]
    graph["bgcap"] = {"class_type": "HarnessCaptureBackground", "inputs": {"value": ["bg", 0], "key": "bg"}}
    graph["bgprev"] = {"class_type": "HarnessCaptureImage", "inputs": {"value": ["bg", 1], "key": "preview"}}
    return graph


def test_bcm_background_node_and_sampling(keys):
    graph = _paired_sampler(_background_nodes(_base_graph(keys, "bcm.safetensors")), background=("bg", 0))
    run = harness.run_graph(graph)
    bg, preview = run.captured["bg"], run.captured["preview"]
    assert bg["samples"].shape == (1, 4, 8, 8) and bg["zero"].shape == (1, 4, 8, 8)
    assert preview.shape == (1, 64, 64, 3)
    assert preview[0, 32, 32].abs().max() == 0 and torch.allclose(preview[0, 2, 2], torch.full((3,), 0.7))
    torch.testing.assert_close(bg["zero"], StubVAE().encode(torch.full((1, 64, 64, 3), 0.5)))  # mid-grey: 0 in [-1, 1]
    with_bg = run.captured["global"]["samples"]
    again = harness.run_graph(_paired_sampler(_background_nodes(_base_graph(keys, "bcm.safetensors")), background=("bg", 0)))
    torch.testing.assert_close(again.captured["global"]["samples"], with_bg, atol=0, rtol=0)
    without = harness.run_graph(_paired_sampler(_base_graph(keys, "bcm.safetensors")))
    assert not torch.allclose(without.captured["global"]["samples"], with_bg)


def test_background_on_a_checkpoint_without_bcm_is_refused(keys):
    graph = _paired_sampler(_background_nodes(_base_graph(keys, "plain.safetensors")), background=("bg", 0))
    with pytest.raises(AssertionError, match="no BCM weights"):
        harness.run_graph(graph)


def test_background_without_mask_or_u2net_names_the_folder(keys):
    graph = _background_nodes({}, with_mask=False)
    with pytest.raises(AssertionError, match="models/u2net"):
        harness.run_graph(graph)


def test_apply_background_for_stock_samplers_matches_paired_ksampler(keys):
    paired = harness.run_graph(_paired_sampler(_background_nodes(_base_graph(keys, "bcm.safetensors")), background=("bg", 0)))
    graph = _background_nodes(_stock_graph(keys, "KSampler", torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)))
    graph["load"]["inputs"]["checkpoint"] = "bcm.safetensors"
    graph["ab"] = {"class_type": "DualAnoDiffApplyBackground", "inputs": {"model": ["load", 0], "background": ["bg", 0], "seed": 7}}
    graph["ks"]["inputs"]["model"] = ["ab", 0]
    stock = harness.run_graph(graph)
    torch.testing.assert_close(stock.captured["global"]["samples"], paired.captured["global"]["samples"], atol=1e-5, rtol=1e-5)


def test_foreign_replace_composes_before_or_after_the_loader(keys):
    """IPAdapter-like attn2 replaces run beside DualAnoDiff through the executor, in either order (the
    effects themselves are measured in test_composition.py)."""
    before = _paired_sampler(_base_graph(keys, model_node=["fr", 0]))
    before["fr"] = {"class_type": "HarnessForeignReplace", "inputs": {"model": ["m", 0]}}
    after = _paired_sampler(_base_graph(keys), model=("fr", 0))
    after["fr"] = {"class_type": "HarnessForeignReplace", "inputs": {"model": ["load", 0]}}
    runs = [harness.run_graph(graph).captured for graph in (before, after)]
    for branch in ("global", "anomaly"):
        torch.testing.assert_close(runs[0][branch]["samples"], runs[1][branch]["samples"], atol=1e-5, rtol=1e-5)


# --- per-branch conditioning options (ControlNet, area, mask) ----------------------------------------
# With SAIM at 0 nothing couples the two rows of a pair, so a ControlNet meant for one branch must leave
# the other branch's rows bit for bit as without it, and give its own rows what ComfyUI's stock
# ControlNet gives them when applied to every row (after pairing, stock KSampler).

CN_LATENTS = (_latents(20, 2), _latents(21, 2))


@pytest.fixture(scope="module")
def controls(keys):
    """Two tiny real ComfyUI ControlNets, "A" and "B", each with its own hint image."""
    model = harness.OBJECTS[keys["model"]]
    return {name: (harness.register(tiny_controlnet(model, seed=seed)),
                   harness.register(torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(seed))))
            for name, seed in (("A", 9), ("B", 31))}


def _cn_graph(keys, controls, **base):
    graph = _pair_latent_nodes(_base_graph(keys, saim=0.0, **base), *CN_LATENTS)
    for name, (net, hint) in controls.items():
        graph[f"cn{name}"] = {"class_type": "HarnessControlNet", "inputs": {"key": net}}
        graph[f"hint{name}"] = {"class_type": "HarnessImage", "inputs": {"key": hint}}
    return graph


def _apply_cn(graph, cond, names):
    """ControlNetApply of each named ControlNet in turn on `cond` (a chain); returns the last output."""
    for name in names:
        node = f"{cond[0]}_{name}"
        graph[node] = {"class_type": "ControlNetApply", "inputs": {
            "conditioning": list(cond), "control_net": [f"cn{name}", 0], "image": [f"hint{name}", 0], "strength": 1.0}}
        cond = (node, 0)
    return cond


def _apply_cn_advanced(graph, positive, negative, name):
    node = f"adv_{positive[0]}_{negative[0]}_{name}"
    graph[node] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": list(positive), "negative": list(negative), "control_net": [f"cn{name}", 0],
        "image": [f"hint{name}", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    return (node, 0), (node, 1)


def _run_paired(graph, positive_global=("pg", 0), positive_anomaly=("pa", 0), negative=("ng", 0)):
    return _pairs(harness.run_graph(_paired_sampler(graph, positive_global=positive_global, positive_anomaly=positive_anomaly,
                                                    negative=negative, latent=("pl", 0))))


def _run_stock(graph, positive, negative=("ng", 0)):
    """Stock KSampler on a CONDITIONING that is already paired (options on it reach every row)."""
    graph["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["load", 0], "positive": list(positive), "negative": list(negative), "latent_image": ["pl", 0],
        "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    graph["split"] = {"class_type": "DualAnoDiffSplitLatents", "inputs": {"latent": ["ks", 0]}}
    graph["cg"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["split", 0], "key": "global"}}
    graph["ca"] = {"class_type": "HarnessCaptureLatent", "inputs": {"value": ["split", 1], "key": "anomaly"}}
    return _pairs(harness.run_graph(graph))


def _paired_cond(graph):
    graph["pc"] = {"class_type": "DualAnoDiffPairConditioning", "inputs": {"positive_global": ["pg", 0], "positive_anomaly": ["pa", 0]}}
    return ("pc", 0)


@pytest.fixture(scope="module")
def cn_runs(keys, controls):
    """Sampled pairs per ControlNet setup, each run once: "none" (no ControlNet), "all:A,B" (chain A then B
    applied to the paired CONDITIONING, so to every row), "g:A|a:B" (chains on the branches' prompts)."""
    cache = {}

    def run(setup):
        if setup not in cache:
            graph = _cn_graph(keys, controls)
            if setup == "none":
                cache[setup] = _run_paired(graph)
            elif setup.startswith("all:"):
                cache[setup] = _run_stock(graph, _apply_cn(graph, _paired_cond(graph), setup[4:].split(",")))
            else:
                chains = {branch: names.split(",") for branch, names in (part.split(":") for part in setup.split("|"))}
                cache[setup] = _run_paired(graph, _apply_cn(graph, ("pg", 0), chains.get("g", [])),
                                           _apply_cn(graph, ("pa", 0), chains.get("a", [])))
        return cache[setup]

    return run


def _rows(pairs, branch):
    return pairs[0::2] if branch == "global" else pairs[1::2]


@pytest.mark.parametrize("branch", ["global", "anomaly"])
def test_controlnet_on_one_branch_reaches_only_its_rows(cn_runs, branch):
    other = "anomaly" if branch == "global" else "global"
    one = cn_runs(f"{branch[0]}:A")
    assert torch.equal(_rows(one, other), _rows(cn_runs("none"), other))  # exactly as without ControlNet
    assert_same_sampling(_rows(one, branch), _rows(cn_runs("all:A"), branch))
    assert_changed(_rows(one, branch), _rows(cn_runs("none"), branch))


def test_controlnets_on_both_branches_each_reach_their_own_rows(cn_runs):
    both = cn_runs("g:A|a:B")
    assert_same_sampling(both[0::2], cn_runs("all:A")[0::2])
    assert_same_sampling(both[1::2], cn_runs("all:B")[1::2])
    assert_changed(cn_runs("all:A"), cn_runs("all:B"))  # A and B steer differently


def test_controlnet_chains_stay_on_their_branch(cn_runs):
    chained = cn_runs("g:A,B|a:B")
    assert_same_sampling(chained[0::2], cn_runs("all:A,B")[0::2])
    assert_same_sampling(chained[1::2], cn_runs("all:B")[1::2])
    assert_changed(cn_runs("all:A,B"), cn_runs("all:B"))


def test_controlnet_after_pairing_adds_to_every_row(keys, controls, cn_runs):
    """A on the global prompt, then B on the paired CONDITIONING (B chains onto the per-branch control)."""
    graph = _cn_graph(keys, controls)
    graph["pc"] = {"class_type": "DualAnoDiffPairConditioning", "inputs": {
        "positive_global": list(_apply_cn(graph, ("pg", 0), ["A"])), "positive_anomaly": ["pa", 0]}}
    out = _run_stock(graph, _apply_cn(graph, ("pc", 0), ["B"]))
    assert_same_sampling(out[0::2], cn_runs("all:A,B")[0::2])
    assert_same_sampling(out[1::2], cn_runs("all:B")[1::2])


def test_controlnet_with_a_bcm_background_steers_only_the_global_rows(keys, controls):
    """BCM's background rows join every UNet call beside the pairs; a ControlNet on the global prompt
    must reach the global rows only (and give the background rows nothing, see the unit test below)."""
    def run(names):
        graph = _background_nodes(_cn_graph(keys, controls, checkpoint="bcm.safetensors"))
        return _pairs(harness.run_graph(_paired_sampler(graph, positive_global=_apply_cn(graph, ("pg", 0), names),
                                                        latent=("pl", 0), background=("bg", 0))))
    plain, with_cn = run([]), run(["A"])
    assert torch.equal(with_cn[1::2], plain[1::2])
    assert_changed(with_cn[0::2], plain[0::2])


def test_background_rows_get_the_global_conditioning_and_no_control(pack):
    background = pack_module(pack, "nodes.background")
    seen = {}

    def unet_call(x, t, **c):
        seen.update(x=x, t=t, **c)
        return x * 2

    x, bg = torch.randn(4, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ctx, t = torch.randn(4, 77, 32), torch.tensor([5.0, 5.0, 3.0, 3.0])
    control = {"output": [torch.ones(4, 8, 8, 8), None], "middle": [torch.ones(4, 8, 2, 2)]}
    out = background.run_with_background(unet_call, x, t, {"c_crossattn": ctx, "control": control,
                                                           "transformer_options": {"sigmas": t}}, bg)
    torch.testing.assert_close(out, x * 2)
    assert torch.equal(seen["x"][2::3], bg) and torch.equal(seen["c_crossattn"][2::3], ctx[0::2])
    assert seen["t"].tolist() == [5.0, 5.0, 5.0, 3.0, 3.0, 3.0] and torch.equal(seen["transformer_options"]["sigmas"], seen["t"])
    got = seen["control"]
    assert got["output"][1] is None and got["output"] is not control["output"]  # ComfyUI pops from these lists
    for tensors in (got["output"][0], got["middle"][0]):
        assert tensors.shape[0] == 6 and tensors[2::3].abs().max() == 0 and tensors[0::3].min() == 1


def test_negative_keeps_its_own_controlnet(keys, controls, cn_runs):
    """Apply ControlNet (positive + negative) on the global prompt and the negative: the negative is not
    paired, its ControlNet steers the unconditional pass of both branches; the positive one only global rows."""
    graph = _cn_graph(keys, controls)
    pos_g, neg = _apply_cn_advanced(graph, ("pg", 0), ("ng", 0), "A")
    out = _run_paired(graph, positive_global=pos_g, negative=neg)

    expected_global = _cn_graph(keys, controls)
    expected_global_out = _run_stock(expected_global, *_apply_cn_advanced(expected_global, _paired_cond(expected_global), ("ng", 0), "A"))
    expected_anomaly = _cn_graph(keys, controls)
    _, neg_only = _apply_cn_advanced(expected_anomaly, ("pg", 0), ("ng", 0), "A")
    expected_anomaly_out = _run_stock(expected_anomaly, _paired_cond(expected_anomaly), neg_only)
    assert_same_sampling(out[0::2], expected_global_out[0::2])
    assert_same_sampling(out[1::2], expected_anomaly_out[1::2])
    assert_changed(out[1::2], cn_runs("none")[1::2])  # the negative's ControlNet did act


AREA_LATENTS = (_latents(22, 2, size=16), _latents(23, 2, size=16))  # 128 px: room for a 64 px area


def _area_graph(keys):
    return _pair_latent_nodes(_base_graph(keys, latent=torch.zeros(2, 4, 16, 16)), *AREA_LATENTS)


def _set_area(graph, node, cond):
    graph[node] = {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": list(cond), "width": 64, "height": 64, "x": 64, "y": 0, "strength": 1.0}}
    return (node, 0)


def test_area_or_mask_on_one_branch_is_refused(keys):
    graph = _area_graph(keys)
    _paired_sampler(graph, positive_global=_set_area(graph, "area", ("pg", 0)), latent=("pl", 0))
    with pytest.raises(AssertionError, match=r"'area' \(only on positive_global\).*both prompts the same way, or to neither"):
        harness.run_graph(graph)
    graph = _area_graph(keys)
    graph["mask"] = {"class_type": "HarnessMask", "inputs": {"key": harness.register(torch.ones(1, 128, 128))}}
    graph["masked"] = {"class_type": "ConditioningSetMask", "inputs": {
        "conditioning": ["pa", 0], "mask": ["mask", 0], "strength": 1.0, "set_cond_area": "default"}}
    _paired_sampler(graph, positive_anomaly=("masked", 0), latent=("pl", 0))
    with pytest.raises(AssertionError, match=r"'mask' \(only on positive_anomaly\).*'mask_strength'"):
        harness.run_graph(graph)


def test_same_area_on_both_branches_is_the_area_of_the_pair(keys):
    graph = _area_graph(keys)
    out = _run_paired(graph, _set_area(graph, "area_g", ("pg", 0)), _set_area(graph, "area_a", ("pa", 0)))
    expected_graph = _area_graph(keys)
    expected = _run_stock(expected_graph, _set_area(expected_graph, "area", _paired_cond(expected_graph)))
    assert_same_sampling(out, expected)
    assert_changed(out, _run_paired(_area_graph(keys)))


def _merge_kohya_lora(unet, path, strength):
    """What a stock LoRA loader does to a diffusers UNet: W += strength * alpha / rank * up @ down."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    merged = 0
    with torch.no_grad():
        for name, module in unet.named_modules():
            key = "lora_unet_" + name.replace(".", "_")
            if f"{key}.lora_up.weight" in sd:
                up, down = sd[f"{key}.lora_up.weight"].float(), sd[f"{key}.lora_down.weight"].float()
                module.weight += strength * float(sd[f"{key}.alpha"]) / down.shape[0] * (up @ down)
                merged += 1
    assert merged and merged * 3 == len(sd)
    return unet


def test_composed_with_stock_lora_loader_and_controlnet(keys, folders, controls):
    """The LoRA + ControlNet workflow: a stock LoRA on the base model, the DualAnoDiff loader, a ControlNet
    on the global prompt. The LoRA acts as merged into the base weights (diffusers reference), the
    ControlNet only on the global rows."""
    import folder_paths

    from dualanodiff_core import Strengths
    from dualanodiff_core.cli import main

    loras = folder_paths.get_folder_paths("loras")[0]
    assert main(["export-lora", str(folders / "plain.safetensors"), "--output-dir", loras, "--dtype", "fp32",
                 "--name", "extra", "--overwrite"]) == 0
    folder_paths.filename_list_cache.clear()

    def run(saim, with_controlnet):
        graph = _cn_graph(keys, controls, model_node=["lora", 0])
        graph["load"]["inputs"]["strength_saim"] = saim
        graph["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["m", 0], "lora_name": "extra_global.safetensors", "strength_model": 0.5}}
        return _run_paired(graph, _apply_cn(graph, ("pg", 0), ["A"] if with_controlnet else []))

    def reference(saim):
        unet = _merge_kohya_lora(tiny_unet(seed=0), f"{loras}/extra_global.safetensors", 0.5)
        dual = load_dual_unet(unet, folders / "plain.safetensors", strengths=Strengths(saim=saim))
        return _reference(keys, dual, interleave_rows(*CN_LATENTS))

    assert_same_sampling(run(1.0, False), reference(1.0))
    with_cn, expected = run(0.0, True), reference(0.0)
    assert_same_sampling(with_cn[1::2], expected[1::2])
    assert_changed(with_cn[0::2], expected[0::2])
