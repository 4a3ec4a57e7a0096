"""Load a Stable Diffusion 1.x base model offline: a diffusers folder or a single-file checkpoint.

Single files (``.safetensors``, ``.ckpt`` read with ``weights_only=True``) are converted with the
SD 1.5 configs bundled in ``configs/sd15`` (or a diffusers-format config folder given by the user),
so nothing is ever downloaded. Other families (SD 2.x, SDXL, ...) are refused with a clear message.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DualAnoDiffError
from ..torch_files import load_weights_pickle

BUNDLED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sd15"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_JSON = "tokenizer.json"  # what current transformers' save_pretrained writes instead
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class BaseModelError(DualAnoDiffError):
    """A base model that cannot be used."""


@dataclass
class BaseModel:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict
    source: str


def place(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """Move a model; cast only when the dtype changes (diffusers warns on every casting ``to``)."""
    model = model.to(device)
    return model if next(model.parameters()).dtype == dtype else model.to(dtype)


def _read_json(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if not k.startswith("_")}


def read_state_dict(path: Path) -> dict:
    """Tensors of a ``.safetensors`` or ``.ckpt``/``.pt`` file (pickles only as plain tensors)."""
    path = Path(path)
    if not path.is_file():
        raise BaseModelError(f"base model file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise BaseModelError(f"cannot read {path} ({str(exc).splitlines()[0]}); it may be truncated") from None
    state = load_weights_pickle(path, str(path), "give the model as .safetensors", BaseModelError)
    while isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def detect_family(state: dict) -> str:
    keys = state.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys) and any(
        k.startswith("model.diffusion_model.") for k in keys
    ):
        return "sd15"
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.", "joint_blocks.")) for k in keys):
        return "flux/sd3"
    return "unknown"


def _refuse_family(family: str, where) -> None:
    if family != "sd15":
        what = {"unknown": "not a Stable Diffusion 1.x checkpoint (no model.diffusion_model.* and "
                           "cond_stage_model.transformer.* keys)"}.get(family, f"a {family} model")
        raise BaseModelError(f"{where} is {what}; DualAnoDiff needs a Stable Diffusion 1.x (SD 1.5) base model")


def _has_tokenizer(folder: Path) -> bool:
    return all((folder / f).is_file() for f in TOKENIZER_FILES) or (folder / TOKENIZER_JSON).is_file()


def find_tokenizer(model_path: Path, tokenizer: Path | None = None, comfyui: Path | None = None) -> Path:
    """The folder with CLIP's vocab.json/merges.txt (or tokenizer.json): the flag, the model folder, a
    ComfyUI install (``--comfyui``, ``COMFYUI_PATH``, or the ComfyUI this pack sits in), in that order."""
    if tokenizer:
        if not _has_tokenizer(Path(tokenizer)):
            raise BaseModelError(f"--tokenizer {tokenizer} has neither vocab.json with merges.txt nor tokenizer.json")
        return Path(tokenizer)
    model_path = Path(model_path)
    candidates = [model_path / "tokenizer"] if model_path.is_dir() else []
    for root in (comfyui, os.environ.get("COMFYUI_PATH"), Path(__file__).resolve().parents[4]):  # ComfyUI/custom_nodes/<pack>/dualanodiff_core/formats
        if root:
            candidates.append(Path(root) / "comfy" / "sd1_tokenizer")
    for folder in candidates:
        if _has_tokenizer(folder):
            return folder
    raise BaseModelError(
        "no CLIP tokenizer found: pass --tokenizer DIR (a folder with vocab.json and merges.txt, or tokenizer.json, "
        "e.g. the 'tokenizer' folder of a diffusers SD 1.5 model) or --comfyui DIR (a ComfyUI install, which ships "
        "them in comfy/sd1_tokenizer)"
    )


def load_tokenizer(folder: Path):
    """CLIP's BPE tokenizer from vocab.json + merges.txt, or from a tokenizer.json alone (same ids)."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    folder = Path(folder)
    if all((folder / f).is_file() for f in TOKENIZER_FILES):
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    return CLIPTokenizerFast(tokenizer_file=str(folder / TOKENIZER_JSON), model_max_length=77)


def check_base_model(path, tokenizer=None, comfyui=None, config_dir=None) -> Path:
    """Everything about a base model that can be known without loading it: the path, its kind, the
    folder structure or file suffix, the config folder; returns the tokenizer folder."""
    path = Path(path)
    if not path.exists():
        raise BaseModelError(f"base model not found: {path}")
    if path.is_dir():
        _check_folder(path)
    elif path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise BaseModelError(f"{path}: expected a diffusers folder or a .safetensors/.ckpt checkpoint")
    elif path.suffix.lower() == ".safetensors":  # the header names the family; pickles must be loaded first
        _refuse_family(detect_family(dict.fromkeys(_safetensors_keys(path))), path)
    if config_dir is not None and not Path(config_dir).is_dir():
        raise BaseModelError(f"--model-config {config_dir} is not a folder")
    return find_tokenizer(path, tokenizer, comfyui)


def _safetensors_keys(path: Path) -> list:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise BaseModelError(f"cannot read {path} ({str(exc).splitlines()[0]}); it may be truncated or still "
                             "downloading, get the file again") from None


def _check_folder(path: Path) -> None:
    for sub in ("unet", "vae", "text_encoder"):
        if not (path / sub).is_dir():
            raise BaseModelError(f"{path} is not a diffusers Stable Diffusion folder: no '{sub}' subfolder")
    config = path / "unet" / "config.json"
    if not config.is_file():
        raise BaseModelError(f"{path} is not a diffusers Stable Diffusion folder: no unet/config.json")
    try:
        cross = _read_json(config).get("cross_attention_dim")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BaseModelError(f"{config} is not valid JSON ({exc}); get the model folder again") from None
    family = "an SDXL" if (path / "text_encoder_2").is_dir() or cross == 2048 else "an SD 2.x" if cross == 1024 else None
    if family:  # other widths are custom SD-1-shaped models (e.g. the demo's tiny one) and are fine
        raise BaseModelError(f"{path} is {family} model; DualAnoDiff needs Stable Diffusion 1.x (text width 768)")


def _load_text_encoder_weights(model: torch.nn.Module, state: dict, where) -> None:
    """Fit CLIP keys with or without the ``text_model.`` level (it differs across transformers versions)."""
    own = model.state_dict()
    if not any(k.startswith("text_model.") for k in own):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in own or not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise BaseModelError(f"{where}: text encoder weights do not fit CLIP-L (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")


def load_single_file(path: Path, config_dir: Path = BUNDLED_CONFIG, dtype=torch.float32):
    """UNet, VAE and text encoder of a single-file SD 1.x checkpoint, converted offline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    state = read_state_dict(path)
    _refuse_family(detect_family(state), path)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    try:
        unet.load_state_dict(convert_ldm_unet_checkpoint(state, unet.config))
        vae.load_state_dict(convert_ldm_vae_checkpoint(state, vae.config))
    except RuntimeError as exc:
        raise BaseModelError(f"{path} does not fit the SD 1.5 architecture ({str(exc).splitlines()[0]})") from None
    _load_text_encoder_weights(text_encoder, convert_ldm_clip_checkpoint(state), path)
    return unet.to(dtype), vae.to(dtype), text_encoder.to(dtype)


def load_folder(path: Path, dtype=torch.float32):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    kw = dict(local_files_only=True, torch_dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **kw)
    return unet, vae, text_encoder


def load_base_model(
    path: Path,
    tokenizer: Path | None = None,
    comfyui: Path | None = None,
    config_dir: Path | None = None,
    dtype=torch.float32,
) -> BaseModel:
    """Load an SD 1.x base model from a diffusers folder or a single file, offline."""
    path = Path(path)
    tokenizer_folder = check_base_model(path, tokenizer, comfyui, config_dir)
    if path.is_dir():
        unet, vae, text_encoder = load_folder(path, dtype)
        sched_file = path / "scheduler" / "scheduler_config.json"
    else:
        unet, vae, text_encoder = load_single_file(path, Path(config_dir or BUNDLED_CONFIG), dtype)
        sched_file = Path(config_dir or BUNDLED_CONFIG) / "scheduler" / "scheduler_config.json"
    if not sched_file.is_file():
        sched_file = BUNDLED_CONFIG / "scheduler" / "scheduler_config.json"
    tok = load_tokenizer(tokenizer_folder)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).eval()
    return BaseModel(unet, vae, text_encoder, tok, _read_json(sched_file), str(path))
