"""``dualanodiff train``: few-shot dual-branch training (both UNet branch LoRAs, SAIM, the shared
text-encoder LoRA through peft, and optionally BCM) on diffusers models.

The step itself (:mod:`.step`) is shared with the ComfyUI Train node: every step's randomness (which
pairs, flips, timesteps, noise) comes from a generator seeded by (seed, step, process), so a resumed run
takes exactly the steps an uninterrupted one would.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from ..formats.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint
from ..formats.base_model import place
from .latent_cache import EncodedPairs
from .data import PairTensors, flips_for, folder_pairs, load_object_masks, mvtec_pairs
from ..runtime.diffusers_adapter import DualAnoDiffUNet, attention_dims
from .step import StepModels, initial_layers, step_loss
from ..image_io import grid, save_png
from ..runtime.sampling import encode_prompts, latent_scale, make_scheduler, sample_pairs, vae_decode, vae_encode
from ..formats.text_encoder_lora import add_text_encoder_lora, text_encoder_lora_tensors
from .train_args import TrainConfig
from .. import checks
from ..runtime.dtypes import torch_dtype
from ..errors import DualAnoDiffError
from ..processes import announce, cpu_threads
from .train_checkpoints import checkpoint_dirs, load_training_checkpoint, read_state, resolve_resume, save_training_checkpoint


def training_pairs(args) -> list:
    if args.mvtec is not None:
        return mvtec_pairs(args.mvtec, args.defect, args.split)
    return folder_pairs(args.images, args.masks)


def default_name(args) -> str:
    if args.name:
        return args.name
    if args.mvtec is not None:
        return f"{Path(args.mvtec).resolve().name}_{args.defect}"
    return Path(args.images).resolve().name


def bcm_object_masks(args, pairs: list) -> list:
    """Object masks (1 = object) at training resolution, from a folder or from U-2-Net."""
    if args.object_masks:
        return load_object_masks(pairs, args.object_masks, args.resolution)
    from .data import _load_rgb
    from ..masks.u2net import load_u2net, saliency

    model = load_u2net(args.u2net)
    images = torch.stack([torch.from_numpy(_load_rgb(p.image, args.resolution, args.resample)).permute(2, 0, 1) for p in pairs])
    with torch.no_grad():
        return list(saliency(model, images)[:, 0])


class DualTrainer:
    """Holds the models and runs steps; ``run`` is the whole training."""

    def __init__(self, args, accelerator, base, pairs: list | None = None):
        self.args, self.acc = args, accelerator
        self.device = accelerator.device
        self.weight_dtype = torch_dtype(args.mixed_precision)
        pairs = training_pairs(args) if pairs is None else pairs
        self.data = PairTensors(pairs, args.resolution, bcm_object_masks(args, pairs) if args.bcm else None,
                                resample=args.resample)
        self.flips = flips_for(args.flip, Path(args.mvtec).resolve().name if args.mvtec is not None else None)
        self.tokenizer = base.tokenizer
        self.scheduler_config = base.scheduler_config
        from diffusers import DDPMScheduler

        self.noise_schedule = DDPMScheduler.from_config(base.scheduler_config)
        self.vae = place(base.vae, self.device, self.weight_dtype)
        self.encoded = EncodedPairs(self.vae)
        unet = place(base.unet, self.device, self.weight_dtype)
        layers = initial_layers(attention_dims(unet), args.rank, saim=not args.no_saim, bcm=args.bcm).to(self.device)
        self.dual = DualAnoDiffUNet(unet, layers)
        self.text_encoder = place(base.text_encoder, self.device, self.weight_dtype)
        te_params = []
        if not args.no_text_encoder_lora:
            te_params = add_text_encoder_lora(self.text_encoder, args.rank)
            for p in te_params:
                p.data = p.data.float()
        if args.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            if te_params:
                self.text_encoder.gradient_checkpointing_enable()
        unet.train()
        self.text_encoder.train()
        self.trainable = {f"unet.{n}": p for n, p in layers.named_parameters()}
        self.trainable.update({f"text_encoder.{n}": p for n, p in self.text_encoder.named_parameters() if p.requires_grad})
        self.optimizer = torch.optim.AdamW(list(self.trainable.values()), lr=args.lr, weight_decay=args.weight_decay)
        self.dual_p, self.te_p, self.optimizer = accelerator.prepare(self.dual, self.text_encoder, self.optimizer)
        self.prompt_ids = base.tokenizer([args.prompt_global, args.prompt_anomaly], padding="max_length",
                                         max_length=base.tokenizer.model_max_length, truncation=True,
                                         return_tensors="pt").input_ids.to(self.device)
        self.models = StepModels(
            encoded=self.encoded, noise_schedule=self.noise_schedule, device=self.device,
            weight_dtype=self.weight_dtype, prompts=lambda: self.te_p(self.prompt_ids)[0],
            eps=lambda noisy, t, context, background: self.dual_p(noisy, t, context, background=background).sample,
            encode_background=lambda pixels, g: vae_encode(self.vae, pixels, scaled=False, generator=g))

    def loss(self, step: int) -> torch.Tensor:
        return step_loss(self.args, self.data, self.flips, self.models, step, self.acc.process_index)

    def train_step(self, step: int) -> float:
        loss = self.loss(step)
        self.acc.backward(loss)
        if self.acc.sync_gradients and self.args.max_grad_norm > 0:
            self.acc.clip_grad_norm_(list(self.trainable.values()), self.args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    @torch.no_grad()
    def validation_grid(self, step: int) -> Path:
        from ..masks.extract import extract_masks

        args = self.args
        self.dual.unet.eval()
        self.text_encoder.eval()
        try:
            emb = encode_prompts(self.tokenizer, self.text_encoder, [args.prompt_global, args.prompt_anomaly, ""])
            gens = [torch.Generator().manual_seed(args.seed + i) for i in range(args.validation_pairs)]
            backgrounds = zero = None
            if args.bcm:
                bg = self.data.backgrounds[:1].expand(args.validation_pairs, -1, -1, -1)
                backgrounds = vae_encode(self.vae, bg, scaled=False).float()
                zero = vae_encode(self.vae, torch.zeros_like(bg[:1]), scaled=False).float()  # 0 in [-1, 1], as the reference
            with self.acc.autocast():
                latents = sample_pairs(
                    self.dual, make_scheduler("ddim", self.scheduler_config), emb[:2], emb[2:].expand(2, -1, -1),
                    gens, (args.resolution // latent_scale(self.vae),) * 2, steps=args.validation_steps, guidance=2.5,
                    backgrounds=backgrounds, zero_background=zero, noise_schedule=self.noise_schedule)
            images = vae_decode(self.vae, latents)
            masks = extract_masks(images[1::2]).binary
            rows = [[images[2 * i], images[2 * i + 1], masks[i]] for i in range(args.validation_pairs)]
            return save_png(grid(rows), Path(args.output_dir) / "validation" / f"step-{step:06d}.png", overwrite=True)
        finally:
            self.dual.unet.train()
            self.text_encoder.train()

    def final_checkpoint(self, name: str, provenance: dict) -> Path:
        ckpt = trained_checkpoint(self.args, self.acc.unwrap_model(self.dual_p).dual_layers,
                                  text_encoder_lora_tensors(self.acc.unwrap_model(self.te_p)), provenance)
        return save_checkpoint(Path(self.args.output_dir) / f"{name}.safetensors", ckpt, dtype=torch_dtype(self.args.save_dtype))


def trained_checkpoint(args, layers, text_encoder_lora: dict, provenance: dict) -> DualAnoDiffCheckpoint:
    """The checkpoint of trained ``layers`` and the text encoder's ``{canonical name: (down, up)}``."""
    tensors = layers_to_tensors(layers)
    components = ["unet_lora"] + ([] if getattr(args, "no_saim", False) else ["saim"]) + (["bcm"] if args.bcm else [])
    if text_encoder_lora:
        components.append("text_encoder_lora")
        for module, (down, up) in text_encoder_lora.items():
            tensors[f"text_encoder.{module}.down"] = down
            tensors[f"text_encoder.{module}.up"] = up
    prompts = {"global": args.prompt_global, "anomaly": args.prompt_anomaly, "negative": ""}
    return DualAnoDiffCheckpoint(tensors, make_metadata(args.rank, components, prompts, provenance))


def run_config(args) -> dict:
    from ..options import as_dict

    return as_dict(args)


def resume_settings(args) -> dict:
    from .train_args import RESUME_SETTINGS

    config = run_config(args)
    return {k: config[k] for k in RESUME_SETTINGS}


def prepare(args) -> list:
    """Check everything a run needs before any model loads or any file is written; returns the pairs."""
    from ..formats.base_model import check_base_model
    from .data import check_pairs
    from .train_args import check_arguments

    check_arguments(args)
    pairs = training_pairs(args)
    check_pairs(pairs)
    if args.object_masks:
        load_object_masks(pairs, args.object_masks, 8)
    check_base_model(args.base_model, args.tokenizer, args.comfyui, args.model_config)
    _check_output(args)
    return pairs


def _check_output(args) -> None:
    out = Path(args.output_dir)
    final = out / f"{default_name(args)}.safetensors"
    if args.resume:
        path = resolve_resume(out, args.resume)
        state = read_state(path)
        checks.same_settings(state.get("settings", {}), resume_settings(args), path,
                             "resume with the same settings (only --steps and the output options may change), or "
                             "start over with --overwrite or another --output-dir")
        if state["step"] >= args.steps:
            raise DualAnoDiffError(f"{path} is at step {state['step']}; --steps {args.steps} leaves nothing to train "
                                   "(raise --steps to continue)")
    elif not args.overwrite and (final.exists() or checkpoint_dirs(out)):
        what = final if final.exists() else out / "checkpoints"
        raise DualAnoDiffError(f"{what} is from an earlier run: pass --resume latest to continue it, --overwrite to "
                               "start over, or choose another --output-dir")


def train(args: TrainConfig, progress=None) -> Path:
    """Run training as configured (``train_args.TrainConfig``); returns the written checkpoint. ``progress``:
    ``(steps done, steps in all)`` after every step, in place of the progress bar (the demo's display)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from ..formats.base_model import load_base_model

    from .train_args import resolve_defaults

    args = resolve_defaults(args)
    pairs = prepare(args)
    out = Path(args.output_dir)
    acc = Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu,
                      log_with=None if args.report_to == "none" else args.report_to, project_dir=str(out))
    from accelerate.utils import set_seed

    announce(acc, "train", cpu_threads(acc))
    base = load_base_model(args.base_model, args.tokenizer, args.comfyui, args.model_config)
    set_seed(args.seed)  # initial weights of SAIM, BCM and the LoRA down projections
    trainer = DualTrainer(args, acc, base, pairs)
    name = default_name(args)
    start = 0
    if args.resume:
        start = load_training_checkpoint(resolve_resume(out, args.resume), trainer.trainable, trainer.optimizer)
    elif acc.is_main_process and args.overwrite:
        for old in checkpoint_dirs(out):
            shutil.rmtree(old)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "training_config.json").write_text(json.dumps(run_config(args), indent=1), encoding="utf-8")
    if args.report_to != "none":
        acc.init_trackers("dualanodiff", config={k: v for k, v in run_config(args).items() if isinstance(v, (int, float, str, bool))})
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train",
               disable=not acc.is_local_main_process or progress is not None)
    began, loss, losses = time.perf_counter(), math.nan, []
    for step in bar:
        loss = trainer.train_step(step)
        losses.append(loss)
        done = step + 1
        bar.set_postfix(loss=f"{loss:.4f}", s_per_step=f"{(time.perf_counter() - began) / (done - start):.2f}")
        if progress is not None:
            progress(done, args.steps)
        if args.report_to != "none" and done % args.log_every == 0:
            acc.log({"loss": loss}, step=done)
        if acc.is_main_process and args.checkpoint_every and done % args.checkpoint_every == 0 and done < args.steps:
            save_training_checkpoint(out, done, trainer.trainable, trainer.optimizer, args.checkpoints_keep,
                                     {"name": name, "settings": resume_settings(args)})
        if acc.is_main_process and args.validate_every and done % args.validate_every == 0:
            trainer.validation_grid(done)
    acc.wait_for_everyone()
    path = None
    if acc.is_main_process:
        provenance = {"trainer": "dualanodiff train", "base_model": Path(args.base_model).name, "steps": args.steps,
                      "pairs": [p.image.name for p in trainer.data.pairs], "seed": args.seed, "final_loss": loss,
                      "losses": [round(v, 6) for v in losses], "first_step": start}
        path = trainer.final_checkpoint(name, provenance)
    acc.end_training()
    return path
