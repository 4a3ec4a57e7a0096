"""How much Perturbed-Attention Guidance (PAG) changes a DualAnoDiff model's output, by part switched on.

    .venv/bin/dualanodiff demo --out /tmp/demo --no-ablation --pairs 8 --cpu   # checkpoints/demo_saim.safetensors
    .venv/bin/python scripts/measure_pag.py --checkpoint /tmp/demo/checkpoints/demo_saim.safetensors  # 20 s
    .venv/bin/python scripts/measure_pag.py --base random-sd15 --checkpoint random --size 128 --pairs 1 --steps 2

(the last takes about 6 minutes on one CPU thread; docs/nodes.md, "PAG with SAIM", has the figures).

PAG (ComfyUI's PerturbedAttentionGuidance node) runs one more conditional pass in which the middle
block's self-attention returns its values ``v`` (identity attention) and adds ``scale * (cond -
perturbed)`` to the guided prediction. Here the same is done on the diffusers path (our attention
processors, the middle attn1's attention swapped for ``v``; SAIM and the LoRA act as always), for four
settings of one model: the base (all strengths 0), the LoRAs without SAIM, the shipped strengths (all
1), SAIM without the LoRAs. For each it prints

- ``eps``: max and mean |cond - perturbed| of the noise prediction at the first sampling step, and
  over all steps (mean of the per-step means), i.e. what PAG adds per unit of scale;
- ``latents``: max and mean change of the final latents that PAG (``--pag-scale``) makes, same seed;
- ``spread``: how different the middle block's self-attention input tokens are from one another
  (mean |h - spatial mean of h| / mean |h|, first step): identity attention equals real attention when
  all tokens are alike, so PAG can only act where this is not small;
- ``pag_delta``: mean |softmax attention - v| / mean |v| at that attention (first step), what PAG removes;
- ``pag/stream``: mean |change of that attention's output (SAIM included) under identity attention| /
  mean |the middle transformer block's residual stream| (first step): how much PAG moves the stream;
- ``middle->eps``: mean |change of the conditional noise prediction| when Gaussian noise of 10% of its
  standard deviation is added to the middle block's output (first step): how much of anything done in
  the middle block (PAG included) reaches the prediction;
- ``saim/o``: mean |SAIM's added term| / mean |attention output it follows| over all attention calls.

``--base`` is a diffusers model folder (default: the demo's shipped tiny base) or ``random-sd15``
(SD 1.5's UNet shapes with PyTorch's default init, random unit-variance prompts, no text encoder);
``--checkpoint`` a DualAnoDiff checkpoint for that base, ``init`` for freshly initialised layers
(the state training starts from: LoRA up-projections zero, SAIM with PyTorch's default init), or
``random`` for rank-4 layers with every weight drawn from N(0, 0.1^2), the tests' random checkpoints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dualanodiff_core.demo.run import DEMO_MODEL, PROMPT_ANOMALY, PROMPT_GLOBAL  # noqa: E402
from dualanodiff_core.model.strengths import Strengths  # noqa: E402
from dualanodiff_core.runtime import diffusers_adapter as adapter  # noqa: E402
from dualanodiff_core.runtime.sampling import encode_prompts, make_scheduler, sample_pairs  # noqa: E402

SETTINGS = (("base (all strengths 0)", (0.0, 0.0, 0.0)), ("LoRAs, SAIM 0", (1.0, 1.0, 0.0)),
            ("shipped (all 1)", (1.0, 1.0, 1.0)), ("SAIM, LoRAs 0", (0.0, 0.0, 1.0)))


class _MiddleSelfAttention:
    """The middle block's attn1 processor, optionally with identity attention (PAG's perturbed pass).
    At its first call it records the token spread of its input, the size of what identity attention
    removes, and how much identity attention changes the block's residual stream (SAIM included)."""

    def __init__(self, processor, block):
        self.processor = processor
        self.identity = False
        self.stats: dict = {}
        self.stream = None
        block.register_forward_pre_hook(lambda module, args, kwargs: setattr(self, "stream", args[0] if args
                                        else kwargs["hidden_states"]), with_kwargs=True)

    def _run(self, identity: bool, attn, *args):
        real = adapter._multi_head_attention

        def attention(attn_, q, k, v, mask):
            out = real(attn_, q, k, v, mask)
            self.stats.setdefault("pag_delta", ((out - v).abs().mean() / v.abs().mean()).item())
            return v if identity else out

        adapter._multi_head_attention = attention
        try:
            return self.processor(attn, *args)
        finally:
            adapter._multi_head_attention = real

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 dualanodiff=None):
        args = (hidden_states, encoder_hidden_states, attention_mask, temb, dualanodiff)
        if not self.stats:
            h = hidden_states.float()
            self.stats["spread"] = ((h - h.mean(1, keepdim=True)).abs().mean() / h.abs().mean()).item()
            change = (self._run(True, attn, *args) - self._run(False, attn, *args)).abs().mean()
            self.stats["pag_stream"] = (change / self.stream.abs().mean()).item()
        return self._run(self.identity, attn, *args)


class PagModel(torch.nn.Module):
    """The dual UNet called as sample_pairs calls it, with PAG added to the conditional half the way
    ComfyUI's node adds it after CFG: guided = cfg + scale * (cond - perturbed), written into the
    conditional half as cond + scale / guidance * (cond - perturbed)."""

    def __init__(self, dual, middle: _MiddleSelfAttention, scale: float, guidance: float):
        super().__init__()
        self.dual, self.middle, self.scale, self.guidance = dual, middle, scale, guidance
        self.eps_effects: list = []
        self.middle_reach = None
        self._noise_middle = False
        self.hook = dual.unet.mid_block.register_forward_hook(self._middle_noise)

    def _middle_noise(self, module, args, out):
        if self._noise_middle:
            gen = torch.Generator().manual_seed(0)
            return out + 0.1 * out.std() * torch.randn(out.shape, generator=gen).to(out)

    def forward(self, sample, t, context, background=None):
        out = self.dual(sample, t, context).sample
        half = sample.shape[0] // 2
        if self.middle_reach is None:  # first step: how much of the middle block's output reaches eps
            self._noise_middle = True
            try:
                noised = self.dual(sample[half:], t, context[half:]).sample
            finally:
                self._noise_middle = False
            self.middle_reach = (noised - out[half:]).abs().mean().item()
        self.middle.identity = True
        try:
            perturbed = self.dual(sample[half:], t, context[half:]).sample
        finally:
            self.middle.identity = False
        delta = out[half:] - perturbed
        self.eps_effects.append((delta.abs().max().item(), delta.abs().mean().item()))
        if self.scale:
            out = torch.cat([out[:half], out[half:] + self.scale / self.guidance * delta])
        return UNet2DConditionOutput(sample=out)


def _saim_ratio(dual, run) -> float:
    """mean |SAIM's added term| / mean |its input| over all sites, during ``run()``."""
    sums = [0.0, 0.0]

    def hook(module, args, output):
        o = args[0]
        sums[0] += (output - o).abs().mean().item()
        sums[1] += o.abs().mean().item()

    handles = [layer.saim.register_forward_hook(hook) for layer in dual.dual_layers.values() if layer.saim is not None]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return sums[0] / sums[1] if sums[1] else float("nan")


def load(base: str, checkpoint: str, seed: int):
    """(dual UNet, cond (2, 77, C), uncond (2, 77, C), scheduler config)."""
    from dualanodiff_core.formats.checkpoint import load_checkpoint
    from dualanodiff_core.formats.text_encoder_lora import apply_text_encoder_lora

    torch.manual_seed(seed)
    if base == "random-sd15":
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()
        gen = torch.Generator().manual_seed(seed + 1)
        cond = torch.randn(2, 77, 768, generator=gen)
        uncond = torch.randn(1, 77, 768, generator=gen).expand(2, -1, -1)
        sched = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        text_encoder = None
    else:
        from dualanodiff_core.formats.base_model import load_base_model

        model = load_base_model(Path(base))
        unet, text_encoder, sched = model.unet, model.text_encoder, model.scheduler_config
    if checkpoint in ("init", "random"):
        layers = adapter.build_layers(unet, rank=4)
        if checkpoint == "random":  # the test checkpoints' recipe (tests/dual_fixtures.random_layers)
            gen = torch.Generator().manual_seed(seed + 2)
            for p in layers.parameters():
                p.data.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    else:
        ckpt = load_checkpoint(Path(checkpoint))
        layers = adapter.build_layers(unet, rank=ckpt.rank, saim=ckpt.has("saim"), bcm=ckpt.has("bcm"))
        ckpt.load_into_layers(layers)
        if text_encoder is not None and ckpt.has("text_encoder_lora"):
            apply_text_encoder_lora(text_encoder, ckpt.text_encoder_lora())
    if text_encoder is not None:
        with torch.no_grad():
            cond = encode_prompts(model.tokenizer, text_encoder, [PROMPT_GLOBAL, PROMPT_ANOMALY])
            uncond = encode_prompts(model.tokenizer, text_encoder, [""]).expand(2, -1, -1)
    return adapter.DualAnoDiffUNet(unet, layers.eval()), cond, uncond, sched


def measure(dual, cond, uncond, sched: dict, size: int, pairs: int, steps: int, guidance: float, scale: float,
            seed: int, scheduler: str = "euler") -> list:
    """One row per setting: the figures listed in the module docstring."""
    procs = dict(dual.unet.attn_processors)
    name = next(p for p in procs if p.startswith("mid_block") and p.endswith("attn1.processor"))
    block = dual.unet.get_submodule(name[: -len(".attn1.processor")])
    middle = _MiddleSelfAttention(procs[name], block)
    dual.unet.set_attn_processor({**procs, name: middle})
    rows = []
    try:
        for label, (g, a, s) in SETTINGS:
            dual._state.strengths = Strengths(global_lora=g, anomaly_lora=a, saim=s)
            finals, models = [], []
            for pag_scale in (0.0, scale):
                model = PagModel(dual, middle, pag_scale, guidance)
                models.append(model)
                middle.stats = {}

                def run():
                    finals.append(sample_pairs(
                        model, make_scheduler(scheduler, sched), cond, uncond,
                        [torch.Generator().manual_seed(seed + i) for i in range(pairs)], (size // 8, size // 8),
                        steps=steps, guidance=guidance))

                ratio = _saim_ratio(dual, run) if s else (run() or 0.0)
                model.hook.remove()
            change = (finals[1] - finals[0]).abs()
            effects = models[0].eps_effects  # along the trajectory without PAG
            rows.append(dict(setting=label, eps_first_max=effects[0][0], eps_first_mean=effects[0][1],
                             eps_mean_over_steps=sum(e[1] for e in effects) / len(effects),
                             latents_max=change.max().item(), latents_mean=change.mean().item(),
                             spread=middle.stats["spread"], pag_delta=middle.stats["pag_delta"],
                             pag_stream=middle.stats["pag_stream"], middle_reach=models[0].middle_reach,
                             saim_ratio=ratio))
    finally:
        dual.unet.set_attn_processor(procs)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--base", default=str(DEMO_MODEL),
                    help="diffusers folder or 'random-sd15' (default: the demo base)")
    ap.add_argument("--checkpoint", required=True, help="DualAnoDiff .safetensors for that base, 'init' or 'random'")
    ap.add_argument("--size", type=int, default=64, help="image size in pixels (default 64, the demo's)")
    ap.add_argument("--pairs", type=int, default=2, help="pairs sampled (default 2)")
    ap.add_argument("--steps", type=int, default=10, help="Euler steps (default 10)")
    ap.add_argument("--guidance", type=float, default=2.5, help="classifier-free guidance (default 2.5)")
    ap.add_argument("--pag-scale", type=float, default=3.0, help="PAG scale (default 3.0, the node's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.guidance == 1.0:
        ap.error("--guidance 1 has no unconditional half; PAG is measured beside classifier-free guidance")
    torch.set_grad_enabled(False)
    dual, cond, uncond, sched = load(args.base, args.checkpoint, args.seed)
    rows = measure(dual, cond, uncond, sched, args.size, args.pairs, args.steps, args.guidance, args.pag_scale,
                   args.seed)
    print(f"base {args.base}, checkpoint {args.checkpoint}, {args.size} px, {args.pairs} pairs, "
          f"{args.steps} Euler steps, guidance {args.guidance}, PAG scale {args.pag_scale}, seed {args.seed}")
    print("| setting | eps max (step 1) | eps mean (step 1) | eps mean (all steps) | latents max | latents mean "
          "| spread | pag_delta | pag/stream | middle->eps | saim/o |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['eps_first_max']:.3g} | {r['eps_first_mean']:.3g} "
              f"| {r['eps_mean_over_steps']:.3g} "
              f"| {r['latents_max']:.3g} | {r['latents_mean']:.3g} | {r['spread']:.3g} | {r['pag_delta']:.3g} "
              f"| {r['pag_stream']:.3g} | {r['middle_reach']:.3g} | {r['saim_ratio']:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
