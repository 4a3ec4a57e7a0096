"""pair_conditioning's options, one by one: each branch's ControlNet reaches only its own rows (checked
here with a stand-in control whose residuals are known; with real ControlNets in sampling in
test_nodes_sampling.py), pooled outputs stack [global, anomaly], other options must match."""
from __future__ import annotations

import pytest
import torch

from workflow_fixtures import pack_module


@pytest.fixture(scope="module")
def pair_conditioning(pack):
    return pack_module(pack, "nodes.paired_sampling").pair_conditioning


@pytest.fixture(scope="module")
def error(pack):
    return pack_module(pack, "dualanodiff_core.errors").DualAnoDiffError


class FakeControl:
    """ComfyUI's control interface; every residual it returns is `value` on every row."""

    def __init__(self, value, hooks=()):
        self.value, self.hooks = value, list(hooks)
        self.previous_controlnet, self.extra_hooks = None, None
        self.calls = []

    def get_control(self, x_noisy, t, cond, batched_number, *rest):
        self.calls.append(("get_control", batched_number, rest))
        if self.value is None:  # e.g. outside its timestep range
            return None
        r = lambda: torch.full_like(x_noisy, self.value)  # noqa: E731
        return {"input": [r(), None], "middle": [r()], "output": [r(), r()]}

    def pre_run(self, model, percent_to_timestep_function):
        self.calls.append(("pre_run", model, percent_to_timestep_function))

    def cleanup(self):
        self.calls.append(("cleanup",))

    def get_models(self):
        return [f"model {self.value}"]

    def inference_memory_requirements(self, dtype):
        return 100 + int(self.value or 0)

    def get_extra_hooks(self):
        return self.hooks


def _prompt(seed, tokens=77):
    return torch.randn(1, tokens, 32, generator=torch.Generator().manual_seed(seed))


def _pair(pair_conditioning, g_opts, a_opts):
    (tensor, opts), = pair_conditioning([[_prompt(1), g_opts]], [[_prompt(2), a_opts]])
    return tensor, opts


def _per_row(residuals, rows):
    """{name: [per-row constant of each residual, or None]} of a ControlNet output, read back by hand."""
    out = {}
    for name, values in residuals.items():
        out[name] = []
        for r in values:
            if r is None:
                out[name].append(None)
                continue
            assert r.shape[0] == rows
            consts = [float(r[i].flatten()[0]) for i in range(rows)]
            assert all(torch.all(r[i] == c) for i, c in enumerate(consts))
            out[name].append(consts)
    return out


def test_prompts_and_pooled_outputs_stack_global_then_anomaly(pair_conditioning):
    pooled_g, pooled_a = torch.randn(1, 16), torch.randn(1, 16)
    g, a = _prompt(1), _prompt(2, tokens=154)
    (tensor, opts), = pair_conditioning([[g, {"pooled_output": pooled_g}]], [[a, {"pooled_output": pooled_a}]])
    assert torch.equal(tensor[0], torch.cat([g[0], g[0]])) and torch.equal(tensor[1], a[0])  # 77 -> 154 tokens
    assert torch.equal(opts["pooled_output"], torch.stack([pooled_g[0], pooled_a[0]]))
    assert "control" not in opts


def test_same_options_pass_and_inputs_are_untouched(pair_conditioning):
    g_opts = {"area": (8, 8, 0, 0), "strength": 0.5, "mask": torch.ones(1, 8, 8), "control_apply_to_uncond": True}
    a_opts = {"area": (8, 8, 0, 0), "strength": 0.5, "mask": torch.ones(1, 8, 8), "control_apply_to_uncond": False}
    before = ({**g_opts}, {**a_opts})
    _, opts = _pair(pair_conditioning, g_opts, a_opts)
    assert opts["area"] == (8, 8, 0, 0) and opts["strength"] == 0.5 and torch.equal(opts["mask"], torch.ones(1, 8, 8))
    assert "control" not in opts and "control_apply_to_uncond" not in opts  # a flag without ControlNet means nothing
    assert (g_opts, a_opts) == before


@pytest.mark.parametrize("g_opts, a_opts, named", [
    ({"area": (8, 8, 0, 0), "strength": 1.0, "set_area_to_bounds": False}, {}, "'area' (only on positive_global)"),
    ({}, {"mask": torch.ones(1, 8, 8), "mask_strength": 1.0}, "'mask' (only on positive_anomaly), 'mask_strength'"),
    ({"mask": torch.ones(1, 8, 8)}, {"mask": torch.zeros(1, 8, 8)}, "'mask' (different values)"),
    ({"strength": 1.0}, {"strength": 0.5}, "'strength' (different values)"),
    ({"start_percent": 0.2, "end_percent": 1.0}, {}, "'start_percent' (only on positive_global), 'end_percent'"),
    ({"hooks": object()}, {"hooks": object()}, "'hooks' (different values)"),
    ({"gligen": ("position", object(), [])}, {}, "'gligen' (only on positive_global)"),
], ids=["area", "mask", "mask-values", "strength", "timestep-range", "hooks", "gligen"])
def test_options_that_differ_between_branches_are_refused(pair_conditioning, error, g_opts, a_opts, named):
    with pytest.raises(error) as raised:
        _pair(pair_conditioning, g_opts, a_opts)
    assert named in str(raised.value) and "Apply them to both prompts the same way, or to neither" in str(raised.value)


@pytest.mark.parametrize("g_value, a_value", [(1.0, 10.0), (1.0, None), (None, 10.0)], ids=["both", "global", "anomaly"])
def test_each_branch_controlnet_reaches_only_its_rows(pair_conditioning, g_value, a_value):
    g = FakeControl(g_value) if g_value is not None else None
    a = FakeControl(a_value) if a_value is not None else None
    _, opts = _pair(pair_conditioning, {"control": g, "control_apply_to_uncond": True} if g else {},
                    {"control": a, "control_apply_to_uncond": True} if a else {})
    assert opts["control_apply_to_uncond"] is True
    x = torch.zeros(8, 4, 2, 2)  # two chunks (cond, uncond) of two pairs each
    residuals = opts["control"].get_control(x, torch.ones(8), {}, 2, {"transformer_options": True})
    row = [g_value or 0.0, a_value or 0.0] * 4  # global rows even, anomaly rows odd, in every chunk
    assert _per_row(residuals, 8) == {"input": [row, None], "middle": [row], "output": [row, row]}
    for c in (g, a):
        if c is not None:  # both copies' signatures reach the real controls (the newer adds transformer_options)
            assert c.calls == [("get_control", 2, ({"transformer_options": True},))]


def test_branch_control_delegates_to_both_chains(pair_conditioning):
    g, a, after = FakeControl(1.0), FakeControl(10.0), FakeControl(100.0)
    _, opts = _pair(pair_conditioning, {"control": g}, {"control": a})
    control = opts["control"]
    assert opts["control_apply_to_uncond"] is False
    control.pre_run("model", len)
    assert g.calls == a.calls == [("pre_run", "model", len)]
    assert control.get_models() == ["model 1.0", "model 10.0"]
    assert control.inference_memory_requirements(torch.float32) == 101 + 110
    assert control.get_extra_hooks() == [] and control.extra_hooks is None and control.previous_controlnet is None
    # a ControlNet applied after pairing chains onto it and acts on every row
    assert control.set_previous_controlnet(after) is control
    residuals = control.get_control(torch.zeros(4, 4, 2, 2), torch.ones(4), {}, 1)
    assert _per_row(residuals, 4)["middle"] == [[101.0, 110.0, 101.0, 110.0]]
    assert control.get_models() == ["model 1.0", "model 10.0", "model 100.0"]
    copied = control.copy()
    assert copied.branches == (g, a) and copied.previous_controlnet is after
    control.cleanup()
    assert [c.calls[-1] for c in (g, a, after)] == [("cleanup",)] * 3


def test_controlnets_returning_nothing(pair_conditioning):
    _, opts = _pair(pair_conditioning, {"control": FakeControl(None)}, {"control": FakeControl(None)})
    assert opts["control"].get_control(torch.zeros(2, 4, 2, 2), torch.ones(2), {}, 1) is None
    _, opts = _pair(pair_conditioning, {"control": FakeControl(None)}, {"control": FakeControl(3.0)})
    residuals = opts["control"].get_control(torch.zeros(2, 4, 2, 2), torch.ones(2), {}, 1)
    assert _per_row(residuals, 2)["output"] == [[0.0, 3.0], [0.0, 3.0]]


def test_controlnet_cases_that_cannot_be_per_branch(pair_conditioning, error):
    shared = FakeControl(1.0)
    _, opts = _pair(pair_conditioning, {"control": shared, "control_apply_to_uncond": True},
                    {"control": shared, "control_apply_to_uncond": True})
    assert opts["control"] is shared  # the same chain on both prompts is meant for every row
    with pytest.raises(error, match=r"'control_apply_to_uncond' \(different values\)"):
        _pair(pair_conditioning, {"control": FakeControl(1.0), "control_apply_to_uncond": True},
              {"control": FakeControl(2.0), "control_apply_to_uncond": False})
    with pytest.raises(error, match=r"'control' \(only on positive_global\).*hooks"):
        _pair(pair_conditioning, {"control": FakeControl(1.0, hooks=["hook group"])}, {})
