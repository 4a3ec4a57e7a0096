"""ComfyUI's own MODEL, CLIP and VAE as the training step's models (``dualanodiff_core.training.step``).

- UNet: DualAnoDiff's patches (``comfy_patches``) on a clone of the MODEL, their layers trainable; the
  step calls the diffusion model with the clone's transformer options, so every weight patch on the
  MODEL (a LoRA loaded before) is part of what trains.
- CLIP: the shared text-encoder LoRA as object patches on a clone of the CLIP (each q/k/v/out projection
  of CLIP's self-attention adds ``up(down(x))``); prompts are encoded through ComfyUI's own CLIP.
- VAE: the posterior of ComfyUI's VAE (its encoder and quant conv), sampled by the step's generator as
  ``dualanodiff train`` samples diffusers' (ComfyUI's public encode gives the mean or a sample, by version).

ComfyUI runs nodes in inference mode and the weights it loads are inference tensors, which autograd
cannot save: :func:`thaw` replaces them, one tensor at a time, by ordinary tensors with the same values.
"""
from __future__ import annotations

import copy
import re

import torch
import torch.utils.checkpoint
import torch.nn.functional as F

from ..dualanodiff_core.errors import DualAnoDiffError
from .branch_layers import LayerBank

# transformers' CLIPAttention registers k, v, q, out in this order; peft initialises the CLI's LoRA in it
_CLIP_PROJECTION_ORDER = ("k_proj", "v_proj", "q_proj", "out_proj")
_CLIP_PROJECTION = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.(k_proj|v_proj|q_proj|out_proj)$")


def thaw(module: torch.nn.Module) -> None:
    """Inference tensors of ``module`` (parameters and buffers) replaced by ordinary copies, frozen."""
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and p.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                elif p is not None:
                    p.requires_grad_(False)
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.clone()


class TrainingBank(LayerBank):
    """The trainable layers of every attention site, handed to the patches as they are (no per-device
    copies: gradients must reach these very parameters)."""

    def get(self, block: tuple, attention: str, like: torch.Tensor):
        return self.layers.get(block + (attention,))


def trainable_unet(model, args):
    """(patched clone of ``model``, the layers keyed as in a checkpoint, the random generator's state after
    them) with fresh layers initialised exactly as ``dualanodiff train`` initialises them for ``args.seed``."""
    from ..dualanodiff_core.model.layers import layer_key
    from ..dualanodiff_core.model.strengths import Strengths
    from ..dualanodiff_core.training.step import initial_layers
    from .attention_sites import attention_sites
    from .comfy_patches import model_object, apply_dual_patches

    sites = attention_sites(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        layers = initial_layers([s.dims for s in sites], args.rank, saim=not args.no_saim, bcm=args.bcm)
        state = torch.random.get_rng_state()  # the text-encoder LoRA is drawn next, as in dualanodiff train
    by_site = {s.block + (s.attention,): layers[layer_key(s.diffusers_path)] for s in sites}
    patched = apply_dual_patches(model, TrainingBank(by_site, "training"), Strengths(1.0, 1.0, 1.0))
    with_training_attention(patched, sites)
    for block in {s.comfy_path.rsplit(".", 1)[0] for s in sites}:
        for norm in ("norm1", "norm2", "norm3"):
            name = f"diffusion_model.{block}.{norm}"
            patched.add_object_patch(name, _subclass_copy(model_object(model, name), _InputCopied))
    if args.gradient_checkpointing:
        for name in checkpointed_layers(model):
            patched.add_object_patch(name, _subclass_copy(model_object(model, name), _Checkpointed))
    return patched, layers, state


class _TrainingAttention:
    """Attention replace patch of the training clone: PyTorch's scaled dot-product attention on the
    projections' outputs (branch LoRA included), as ``dualanodiff train`` computes it. ComfyUI's default
    attention on a CPU is chunked for memory-bound inference and costs more to train through; some
    attention kernels ComfyUI picks on GPUs (Sage) have no backward pass at all."""

    def __call__(self, q, k, v, extra_options):
        from ..dualanodiff_core.model.attention_step import multi_head_attention

        return multi_head_attention(q, k, v, extra_options["n_heads"])

    def __deepcopy__(self, memo):
        return self


def with_training_attention(patched, sites) -> None:
    """The training attention on every attention site of ``patched`` that has no replace patch of another
    pack already (that one keeps the site: IPAdapter, PAG and the like change what the model learns from)."""
    replaced = patched.model_options.get("transformer_options", {}).get("patches_replace", {})
    attention = _TrainingAttention()
    for site in sites:
        taken = replaced.get(site.attention, {})
        if site.block in taken or site.block[:2] in taken:
            continue
        setter = patched.set_model_attn1_replace if site.attention == "attn1" else patched.set_model_attn2_replace
        setter(attention, *site.block)


def checkpointed_layers(model) -> list:
    """Names of the UNet's residual and transformer layers: what gradient checkpointing recomputes (the
    block containers are not called as modules, ComfyUI steps through their layers itself)."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    return [f"diffusion_model.{name}" for name, module in model.model.diffusion_model.named_modules()
            if _LAYER.match(name) and isinstance(module, (ResBlock, SpatialTransformer))]


_LAYER = re.compile(r"^(input_blocks\.\d+|middle_block|output_blocks\.\d+)\.\d+$")


class _Checkpointed:
    """Mixin of a copied UNet layer: its activations are recomputed in the backward pass instead of kept.
    The transformer options dict is copied for the recomputation, as ComfyUI moves its block keys on
    before the backward pass comes back to this layer."""

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return super().forward(*args, **kwargs)
        args = [dict(a) if isinstance(a, dict) else a for a in args]
        kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
        return torch.utils.checkpoint.checkpoint(super().forward, *args, use_reentrant=False, **kwargs)


class _InputCopied:
    """Mixin of a copied transformer-block norm: normalises a copy of its input. The March 2024 copy of
    ComfyUI adds the attention output to the block's input in place, after the norm kept that input
    for the backward pass; the copy keeps it intact."""

    def forward(self, x, *args, **kwargs):
        return super().forward(x.clone() if torch.is_grad_enabled() else x, *args, **kwargs)


class _LoraLinear:
    """Mixin of a copied CLIP projection: its own output plus ``up(down(x))`` (peft's LoRA at scale 1)."""

    def forward(self, x, *args, **kwargs):
        out = super().forward(x, *args, **kwargs)
        down, up = self.__dict__["_dualanodiff_lora"]
        return out + F.linear(F.linear(x, down.to(x.dtype)), up.to(x.dtype)).to(out.dtype)


_classes: dict = {}


class _OutOfPlaceLayer:
    """Mixin of a copied CLIP layer: ComfyUI's CLIP layer adds its attention and MLP outputs to ``x`` in
    place, which autograd refuses once ``x`` is needed for a backward pass; the same sums, out of place."""

    def forward(self, x, mask=None, optimized_attention=None):
        x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        return x + self.mlp(self.layer_norm2(x))


def _subclass_copy(module, mixin: type, **attributes):
    """A copy of ``module`` (sharing its parameters and submodules) whose class puts ``mixin`` first."""
    key = (mixin, type(module))
    cls = _classes.get(key)
    if cls is None:
        cls = _classes[key] = type(f"DualAnoDiff{mixin.__name__.strip('_')}{type(module).__name__}",
                                   (mixin, type(module)), {"__module__": __name__})
    wrapped = copy.copy(module)
    wrapped.__class__ = cls
    wrapped.__dict__.update(attributes)
    return wrapped


def clip_projections(clip) -> dict:
    """``{canonical name: module name under the CLIP patcher's model}`` for q/k/v/out of every CLIP
    self-attention, in transformers' module order (layer by layer: k, v, q, out)."""
    from .comfy_patches import model_object

    found = {}
    for name, _ in clip.patcher.model.named_modules():
        m = _CLIP_PROJECTION.search(name)
        module = model_object(clip.patcher, name) if m else None  # as this CLIP sees it, not another clone's patch
        if m and isinstance(module, torch.nn.Linear):
            found[(int(m[1]), _CLIP_PROJECTION_ORDER.index(m[2]))] = (
                f"text_model.encoder.layers.{m[1]}.self_attn.{m[2]}", name, module)
    if not found:
        raise DualAnoDiffError("this CLIP has no CLIP-L self-attention layers; DualAnoDiff trains SD 1.x checkpoints")
    return {canonical: (name, module) for _, (canonical, name, module) in sorted(found.items())}


def trainable_clip(clip, rank: int, rng_state: torch.Tensor, device) -> tuple:
    """(clone of ``clip`` carrying a fresh trainable text-encoder LoRA, {canonical: (down, up)} parameters),
    initialised as ``dualanodiff train``'s peft LoRA is (from ``rng_state``, where the UNet layers left it)."""
    from ..dualanodiff_core.training.step import initial_text_encoder_lora
    from .comfy_patches import model_object

    projections = clip_projections(clip)
    shapes = [(c, m.in_features, m.out_features) for c, (_, m) in projections.items()]
    with torch.random.fork_rng(devices=[]):
        torch.random.set_rng_state(rng_state)
        initial = initial_text_encoder_lora(shapes, rank)
    patched = clip.clone()
    lora = {}
    for canonical, (name, module) in projections.items():
        down, up = (torch.nn.Parameter(t.to(device, torch.float32)) for t in initial[canonical])
        lora[canonical] = (down, up)
        patched.patcher.add_object_patch(name, _subclass_copy(module, _LoraLinear, _dualanodiff_lora=(down, up)))
    for name in {name.rsplit(".self_attn.", 1)[0] for name, _ in projections.values()}:
        patched.patcher.add_object_patch(name, _subclass_copy(model_object(clip.patcher, name), _OutOfPlaceLayer))
    return patched, lora


def prompt_tokens(clip, prompt: str):
    """ComfyUI's tokens of ``prompt``, refused where ComfyUI would read it otherwise than the CLI's tokenizer
    (weights in brackets, more than one 77-token chunk)."""
    tokens = clip.tokenize(prompt)
    for chunks in tokens.values():
        if len(chunks) != 1:
            raise DualAnoDiffError(f"prompt {prompt!r} is longer than one 77-token chunk; shorten it (training "
                                   "uses one chunk, as dualanodiff train does)")
        if any(t[1] != 1.0 for t in chunks[0]):
            raise DualAnoDiffError(f"prompt {prompt!r} carries ComfyUI weights such as (word:1.2); train with a "
                                   "plain prompt (escape brackets as \\( \\))")
    return tokens


class VAEPosterior:
    """diffusers' VAE interface over a ComfyUI VAE, for the step's latent cache: ``encode(x).latent_dist``
    is the posterior of ComfyUI's encoder, ``config.scaling_factor`` the MODEL's latent scale."""

    class _Config:
        def __init__(self, scaling_factor: float):
            self.scaling_factor = scaling_factor

    class _Encoded:
        def __init__(self, latent_dist):
            self.latent_dist = latent_dist

    def __init__(self, vae, scaling_factor: float):
        self.vae = vae
        self.config = self._Config(scaling_factor)

    def parameters(self):
        return self.vae.first_stage_model.parameters()

    def encode(self, x: torch.Tensor):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        model = self.vae.first_stage_model
        moments = model.encoder(x)
        quant = getattr(model, "quant_conv", None)
        if quant is not None:
            moments = quant(moments)
        return self._Encoded(DiagonalGaussianDistribution(moments))
