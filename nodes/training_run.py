"""The Train node's run: settings checked, an earlier result reused or an interrupted run resumed, the
core's steps on ComfyUI's models (:mod:`comfy_training`), the checkpoint written to models/dualanodiff.

Files: ``models/dualanodiff/<name>.safetensors`` (our checkpoint format; its metadata holds every
setting, the pairs and a hash of the base UNet), and while a run is unfinished
``output/dualanodiff-training/<name>/checkpoints/step-NNNNNN`` (trainable weights, optimiser, step,
loss history), written when the run is cancelled and every ``CHECKPOINT_EVERY`` steps, removed when
the run ends.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..dualanodiff_core import checks
from ..dualanodiff_core.errors import DualAnoDiffError

CHECKPOINT_EVERY = 500
TRAINER = "ComfyUI DualAnoDiff Train"


@dataclass
class TrainingPairs:
    """What the Training Pairs node hands on: files (as ``dualanodiff train`` reads them) or PIL images."""

    source: str                 # where they came from, for messages and the checkpoint's metadata
    files: list = None          # core ``Pair``s of image and mask paths
    images: list = None         # PIL RGB images ...
    masks: list = None          # ... and PIL L masks
    names: list = field(default_factory=list)
    category: str | None = None  # the MVTec category, for its flip rule

    def tensors(self, resolution: int, resample: str, object_masks: list | None = None):
        """The pairs at ``resolution``; with ``object_masks`` (1 = object, one per pair) their BCM backgrounds."""
        from ..dualanodiff_core.training.data import PairTensors

        if self.files is not None:
            return PairTensors(self.files, resolution, object_masks, resample=resample)
        return PairTensors.from_images(self.images, self.masks, self.names, resolution, resample, object_masks)

    def rgb(self, resolution: int, resample: str) -> list:
        """Each pair's image as float RGB in [0, 1] at ``resolution``, resized as for training."""
        from ..dualanodiff_core.training.data import _load_rgb, _rgb_at

        if self.files is not None:
            return [_load_rgb(p.image, resolution, resample) for p in self.files]
        return [_rgb_at(im, resolution, resample) for im in self.images]

    def sizes(self) -> list:
        """Each pair's image size (width, height)."""
        from PIL import Image

        if self.files is None:
            return [im.size for im in self.images]
        sizes = []
        for p in self.files:
            with Image.open(p.image) as im:
                sizes.append(im.size)
        return sizes

    def fingerprint(self) -> str:
        """A hash of the pairs' pixels (file bytes, or the images' and masks' pixels)."""
        h = hashlib.sha256()
        if self.files is not None:
            for p in self.files:
                h.update(Path(p.image).read_bytes())
                h.update(Path(p.mask).read_bytes())
        else:
            for im, m in zip(self.images, self.masks):
                h.update(repr(im.size).encode())
                h.update(im.tobytes())
                h.update(m.tobytes())
        return h.hexdigest()[:16]


def unet_hash(model) -> str:
    """sha256 (first 16 hex digits) of the base UNet's weights as the MODEL holds them, patches not applied."""
    h = hashlib.sha256()
    for name, t in sorted(model.model.diffusion_model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_path(name: str) -> Path:
    import folder_paths

    from .model_folders import register_model_folders

    checks.folder_name(name, "name")
    register_model_folders()
    return Path(folder_paths.get_folder_paths("dualanodiff")[0]) / f"{name}.safetensors"


def state_folder(name: str) -> Path:
    """Where an unfinished run keeps its state: under ComfyUI's output folder, not models/dualanodiff (whose
    subfolders ComfyUI lists as checkpoints)."""
    import folder_paths

    return Path(folder_paths.get_output_directory()) / "dualanodiff-training" / name


def _provenance(path: Path) -> dict:
    """The provenance a checkpoint's metadata records ({} for none)."""
    from ..dualanodiff_core.formats.checkpoint import read_safetensors

    return json.loads(read_safetensors(path)[1].get("provenance", "{}") or "{}")


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def train_node(model, clip, vae, pairs: TrainingPairs, *, name: str, precision: str, save_dtype: str,
               overwrite: bool, bcm_object_masks=None, bcm_u2net=None, **options) -> tuple:
    """The Train node: (MODEL, CLIP, loss curve IMAGE, checkpoint file name). ``options``: the core
    ``TrainConfig`` fields the node exposes; BCM trains when ``bcm_object_masks`` (a MASK, 1 = object, one
    per pair) or ``bcm_u2net`` (which finds the objects) is given."""
    import comfy.model_management
    import comfy.supported_models
    import comfy.utils
    import numpy as np

    from ..dualanodiff_core.training.loss_curve import loss_curve
    from ..dualanodiff_core.training.train_args import TrainConfig, check_numbers
    from .loading import load_dual_model
    from .training_pairs import object_masks

    if not isinstance(pairs, TrainingPairs):
        raise DualAnoDiffError("the pairs input must come from DualAnoDiff Training Pairs")
    if not isinstance(model.model.model_config, comfy.supported_models.SD15):
        raise DualAnoDiffError(f"this MODEL is {type(model.model.model_config).__name__}, not Stable Diffusion 1.5: "
                               "DualAnoDiff trains SD 1.x checkpoints; load one with Load Checkpoint")
    bcm = bcm_object_masks is not None or bcm_u2net is not None
    args = TrainConfig(base_model=Path("ComfyUI MODEL"), output_dir=Path("."), bcm=bcm, **options)
    check_numbers(args)
    checkpoint_path(name)  # the name, before anything runs
    objects = object_masks(pairs, args.resolution, args.resample, bcm_object_masks, bcm_u2net)
    dtype = next(model.model.diffusion_model.parameters()).dtype if precision == "auto" else PRECISIONS[precision]
    bar = comfy.utils.ProgressBar(args.steps)
    every = max(1, args.steps // 20)

    def progress(step, total, losses):
        preview = None
        if step % every == 0 or step == total:
            preview = ("PNG", loss_curve(losses, total_steps=total), 512)
        bar.update_absolute(step, total, preview)
        comfy.model_management.throw_exception_if_processing_interrupted()

    with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; training needs autograd
        path, losses = train(model, clip, vae, pairs, args, name, overwrite, save_dtype,
                             None if dtype == torch.float32 else dtype, progress, objects)
    dual_model, dual_clip, _ = load_dual_model(model, clip, str(path), 1.0, 1.0, 1.0, 1.0)
    curve = np.asarray(loss_curve(losses, total_steps=args.steps), np.float32) / 255
    return dual_model, dual_clip, torch.from_numpy(curve)[None], path.name


def train(model, clip, vae, pairs: TrainingPairs, args, name: str, overwrite: bool, save_dtype: str,
          autocast_dtype: torch.dtype | None = None, progress=None, object_masks: list | None = None) -> tuple:
    """Train (or reuse, or resume) and write the checkpoint. Returns (checkpoint path, loss history).

    ``args``: a core ``TrainConfig`` (its data, base-model and output fields unused); ``progress``:
    ``(step, total, losses)`` after every step (the node's progress bar); cancelling ComfyUI raises in it;
    ``object_masks``: BCM's, one per pair at the training resolution (with ``args.bcm``)."""
    from ..dualanodiff_core.formats.checkpoint import save_checkpoint
    from ..dualanodiff_core.runtime.dtypes import torch_dtype
    from ..dualanodiff_core.training.train_checkpoints import (
        checkpoint_dirs, load_training_checkpoint, read_state, save_training_checkpoint,
    )
    from ..dualanodiff_core.training.trainer import trained_checkpoint

    final = checkpoint_path(name)
    settings = _settings(args, pairs, unet_hash(model), save_dtype, object_masks)
    if final.exists():
        recorded = _provenance(final)
        if recorded.get("trainer") == TRAINER and recorded.get("settings") == json.loads(json.dumps(settings)):
            return final, recorded.get("losses", [])
        if not overwrite:
            raise DualAnoDiffError(f"{final} already exists (made with other settings or by another trainer); turn "
                                   "on 'overwrite' to replace it, or choose another name")
    state_root = state_folder(name)
    data = pairs.tensors(args.resolution, args.resample, object_masks)
    run = _ComfyRun(model, clip, vae, args, data, pairs, autocast_dtype)
    start, losses = 0, []
    found = checkpoint_dirs(state_root)
    state = read_state(found[-1]) if found else {}
    if state.get("settings") == json.loads(json.dumps(settings)):
        start = load_training_checkpoint(found[-1], run.trainable, run.optimizer)
        losses = list(state.get("losses", []))[:start]
    elif state_root.exists():
        shutil.rmtree(state_root)  # an interrupted run with other settings: it cannot be continued

    def keep_state(step):
        save_training_checkpoint(state_root, step, run.trainable, run.optimizer, 1,
                                 {"name": name, "settings": settings, "losses": losses})

    try:
        for step in range(start, args.steps):
            losses.append(run.train_step(step))
            if progress is not None:
                progress(step + 1, args.steps, losses)
            if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < args.steps:
                keep_state(step + 1)
    except BaseException:
        if len(losses) > start:
            keep_state(len(losses))  # cancelled (or failed) at a step boundary: queue the graph again to continue
        raise
    provenance = {"trainer": TRAINER, "settings": settings, "steps": args.steps, "seed": args.seed,
                  "pairs": list(pairs.names), "final_loss": losses[-1] if losses else math.nan,
                  "losses": [round(v, 6) for v in losses]}
    ckpt = trained_checkpoint(args, run.layers, run.text_encoder_lora(), provenance)
    save_checkpoint(final, ckpt, dtype=torch_dtype(save_dtype))
    shutil.rmtree(state_root, ignore_errors=True)
    return final, losses


def _settings(args, pairs: TrainingPairs, base_hash: str, save_dtype: str, object_masks: list | None) -> dict:
    from ..dualanodiff_core.training.train_args import RESUME_SETTINGS

    kept = {k: getattr(args, k) for k in RESUME_SETTINGS if k not in ("mvtec", "defect", "split", "images", "masks",
                                                                        "base_model", "object_masks")}
    settings = {**kept, "steps": args.steps, "base_unet_sha256": base_hash, "pairs": pairs.fingerprint(),
                "pairs_source": pairs.source, "save_dtype": save_dtype}
    if object_masks is not None:
        h = hashlib.sha256()
        for m in object_masks:
            h.update(torch.as_tensor(m, dtype=torch.float32).numpy().tobytes())
        settings["object_masks"] = h.hexdigest()[:16]
    return settings


class _ComfyRun:
    """The models, trainable parameters and optimiser of one run, on the device ComfyUI loads the MODEL to."""

    def __init__(self, model, clip, vae, args, data, pairs: TrainingPairs, autocast_dtype):
        import comfy.model_management as mm
        from diffusers import DDPMScheduler

        from ..dualanodiff_core.formats.base_model import BUNDLED_CONFIG
        from ..dualanodiff_core.training.data import flips_for
        from ..dualanodiff_core.training.latent_cache import EncodedPairs
        from ..dualanodiff_core.training.step import StepModels
        from ..dualanodiff_core.runtime.sampling import vae_encode
        from .background import run_with_background
        from .comfy_training import VAEPosterior, prompt_tokens, thaw, trainable_clip, trainable_unet

        self.args, self.data, self.autocast_dtype = args, data, autocast_dtype
        self.flips = flips_for(args.flip, pairs.category)
        self.patched, self.layers, rng = trainable_unet(model, args)
        self.device = torch.device(model.load_device)
        self.layers.to(self.device)
        self.clip, self.te_lora = clip, {}
        if not args.no_text_encoder_lora:
            self.clip, self.te_lora = trainable_clip(clip, args.rank, rng, self.device)
        tokens = [prompt_tokens(self.clip, p) for p in (args.prompt_global, args.prompt_anomaly)]
        mm.load_models_gpu([self.patched, self.clip.patcher, vae.patcher])
        thaw(self.patched.model.diffusion_model)
        thaw(self.clip.cond_stage_model)
        unet = self.patched.model.diffusion_model
        weight_dtype = next(unet.parameters()).dtype
        options = self.patched.model_options["transformer_options"]
        schedule = DDPMScheduler.from_config(json.loads(
            (BUNDLED_CONFIG / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8")))
        scale = model.model.latent_format.scale_factor

        def prompts():
            return torch.cat([self.clip.encode_from_tokens(t) for t in tokens]).to(self.device)

        if not self.te_lora:
            with torch.no_grad():
                fixed = prompts()
            prompts = lambda: fixed  # noqa: E731 (nothing of the text encoder trains)

        def call(x, t, context=None, transformer_options=None):
            return unet(x, timesteps=t, context=context, transformer_options=transformer_options)

        def eps(noisy, t, context, background):
            c = {"context": context.to(weight_dtype), "transformer_options": dict(options)}
            with self._autocast():
                if background is None:
                    return call(noisy, t, **c)
                return run_with_background(call, noisy, t, c, background)  # BCM: each pair with its background row

        posterior = VAEPosterior(vae, scale)
        self.models = StepModels(encoded=EncodedPairs(posterior), noise_schedule=schedule, prompts=prompts, eps=eps,
                                 device=self.device, weight_dtype=weight_dtype,
                                 encode_background=lambda pixels, g: vae_encode(posterior, pixels, scaled=False, generator=g))
        self.trainable = {f"unet.{n}": p for n, p in self.layers.named_parameters()}
        for canonical, (down, up) in self.te_lora.items():
            self.trainable[f"text_encoder.{canonical}.down"] = down
            self.trainable[f"text_encoder.{canonical}.up"] = up
        self.optimizer = torch.optim.AdamW(list(self.trainable.values()), lr=args.lr, weight_decay=args.weight_decay)

    def _autocast(self):
        import contextlib

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, step: int) -> float:
        from ..dualanodiff_core.training.step import step_loss

        with torch.inference_mode(False), torch.enable_grad():
            loss = step_loss(self.args, self.data, self.flips, self.models, step)
            loss.backward()
            if self.args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), self.args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    def text_encoder_lora(self) -> dict:
        return {c: (down.detach(), up.detach()) for c, (down, up) in self.te_lora.items()}
