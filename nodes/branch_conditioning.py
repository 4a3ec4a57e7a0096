"""Per-branch conditioning options for paired sampling.

A paired CONDITIONING entry covers both branches: its tensor has the global prompt in row 0 and the
anomaly prompt in row 1, tiled by ComfyUI over the interleaved batch ``[g0, a0, g1, a1, ...]``. Its
options, though, apply to the whole entry. ControlNets are made per-row by :class:`BranchControl`;
options that no entry can hold per row must be the same on both prompts, or pairing is refused.
No ComfyUI import: the control objects are only called through their interface.
"""
from __future__ import annotations

from itertools import zip_longest

import torch

from ..dualanodiff_core.errors import DualAnoDiffError


class BranchControl:
    """ComfyUI control object that runs each branch's own ControlNet chain and keeps its residuals on
    that branch's rows only (``None`` for a branch without ControlNet): global rows are even, anomaly
    rows odd.

    It has ComfyUI's ControlBase interface (2024 and newer copies): ``get_control`` is called on the
    whole forward batch, made of chunks (cond, uncond, ...) of interleaved pairs, so row parity tells
    the branch everywhere. ``previous_controlnet`` (set when a ControlNet is applied after pairing)
    acts on all rows, as ComfyUI's own chains do.
    """

    def __init__(self, global_control, anomaly_control):
        self.branches = (global_control, anomaly_control)
        self.previous_controlnet = None
        self.extra_hooks = None  # read directly by newer copies; hooks cannot be per branch

    def _chains(self):
        """(control, branch index or None for all rows) for every chain this object runs."""
        chains = [(c, i) for i, c in enumerate(self.branches) if c is not None]
        if self.previous_controlnet is not None:
            chains.append((self.previous_controlnet, None))
        return chains

    def get_control(self, x_noisy, t, cond, batched_number, *args, **kwargs):
        parity = torch.arange(x_noisy.shape[0], device=x_noisy.device) % 2
        out = None
        for control, branch in self._chains():
            residuals = control.get_control(x_noisy, t, cond, batched_number, *args, **kwargs)
            if residuals is None:
                continue
            if branch is not None:
                keep = parity == branch
                residuals = {name: [None if r is None else torch.where(keep.view(-1, *[1] * (r.ndim - 1)), r, 0.0)
                                    for r in values] for name, values in residuals.items()}
            out = residuals if out is None else _add_residuals(out, residuals)
        return out

    def pre_run(self, model, percent_to_timestep_function):
        for control, _ in self._chains():
            control.pre_run(model, percent_to_timestep_function)

    def cleanup(self):
        for control, _ in self._chains():
            control.cleanup()

    def get_models(self):
        return [m for control, _ in self._chains() for m in control.get_models()]

    def inference_memory_requirements(self, dtype):
        return sum(control.inference_memory_requirements(dtype) for control, _ in self._chains())

    def get_extra_hooks(self):
        return [h for control, _ in self._chains() for h in getattr(control, "get_extra_hooks", list)()]

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet
        return self

    def copy(self):
        c = BranchControl(*self.branches)
        c.previous_controlnet = self.previous_controlnet
        return c


def _add_residuals(a: dict, b: dict) -> dict:
    """Sum two ControlNet outputs ({'input': [...], 'middle': [...], 'output': [...]}, None = no residual)."""
    return {name: [y if x is None else x if y is None else x + y
                   for x, y in zip_longest(a.get(name, []), b.get(name, []))]
            for name in {**a, **b}}


def _same(x, y) -> bool:
    if x is y:
        return True
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
                and x.dtype == y.dtype and x.device == y.device and torch.equal(x, y))
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(map(_same, x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    try:
        return bool(x == y)
    except Exception:  # objects without a usable == are the same only when identical
        return False


def _where(option: str, g_opts: dict, a_opts: dict) -> str:
    if option not in a_opts:
        return f"{option!r} (only on positive_global)"
    if option not in g_opts:
        return f"{option!r} (only on positive_anomaly)"
    return f"{option!r} (different values)"


def _refuse(options: list, g_opts: dict, a_opts: dict, why: str) -> DualAnoDiffError:
    listed = ", ".join(_where(o, g_opts, a_opts) for o in options)
    return DualAnoDiffError(
        f"the conditioning option(s) {listed} differ between positive_global and positive_anomaly, but {why}. "
        "Apply them to both prompts the same way, or to neither (e.g. to the paired CONDITIONING after "
        "'DualAnoDiff Pair Conditioning', where they reach both branches)"
    )


def _paired_control(g_opts: dict, a_opts: dict, opts: dict) -> None:
    """Put the branches' ControlNets into ``opts`` so that each reaches only its own rows."""
    g, a = g_opts.get("control"), a_opts.get("control")
    if g is None and a is None:
        return
    flags = {bool(o.get("control_apply_to_uncond", False)) for o in (g_opts, a_opts) if o.get("control") is not None}
    if len(flags) > 1:
        raise _refuse(["control_apply_to_uncond"], g_opts, a_opts,
                      "one ControlNet also steers the negative prompt (ControlNetApply) and the other does not "
                      "(ControlNetApplyAdvanced), which one paired conditioning cannot do per branch")
    opts["control_apply_to_uncond"] = flags.pop()
    if g is a:  # the same chain on both branches is meant for all rows
        opts["control"] = g
    elif any(c is not None and getattr(c, "get_extra_hooks", list)() for c in (g, a)):
        raise _refuse(["control"], g_opts, a_opts, "a ControlNet with hooks changes the weights of the whole batch")
    else:
        opts["control"] = BranchControl(g, a)


def pair_options(g_opts: dict, a_opts: dict) -> dict:
    """The options of one paired entry: per-row ControlNets, pooled outputs stacked ``[global, anomaly]``,
    every other option passed through when both prompts carry the same value, refused otherwise."""
    opts = {}
    _paired_control(g_opts, a_opts, opts)
    pooled_g, pooled_a = g_opts.get("pooled_output"), a_opts.get("pooled_output")
    if pooled_g is not None and pooled_a is not None:
        opts["pooled_output"] = torch.cat([pooled_g, pooled_a])
    elif pooled_g is not None or pooled_a is not None:  # one branch only: unused by SD 1.x, kept as it was
        opts["pooled_output"] = pooled_g if pooled_g is not None else pooled_a
    differing = []
    for option in {**g_opts, **a_opts}:
        if option in ("control", "control_apply_to_uncond", "pooled_output"):
            continue
        if option in g_opts and option in a_opts and _same(g_opts[option], a_opts[option]):
            opts[option] = g_opts[option]
        else:
            differing.append(option)
    if differing:
        raise _refuse(differing, g_opts, a_opts, "one paired conditioning applies its options to the rows of both branches")
    return opts
