"""The DualAnoDiff checkpoint: one ``.safetensors`` file, specified in docs/checkpoint-format.md."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..io_utils import atomic_save_safetensors
from ..model.layers import AttentionDims, expected_tensors, layer_path

FORMAT_NAME = "dualanodiff"
FORMAT_VERSION = 1
BASE_MODEL = "sd15"
OTHER_FAMILIES = {1024: "sd2", 2048: "sdxl"}  # cross-attention width -> family we refuse
COMPONENTS = ("unet_lora", "saim", "bcm", "text_encoder_lora")
DEFAULT_PROMPTS = {"global": "a vfx with sks", "anomaly": "sks", "negative": ""}

_UNET_KEY = re.compile(r"^unet\.(?P<path>.+\.attn[12])\.(?P<suffix>(lora_\w+|saim|bcm)\..+)$")
_TE_KEY = re.compile(r"^text_encoder\.(?P<module>.+\.self_attn\.(q|k|v|out)_proj)\.(?P<part>down|up)$")


def _short_list(items, limit: int = 6) -> str:
    items = sorted(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


@dataclass
class DualAnoDiffCheckpoint:
    """Tensors and metadata of a validated checkpoint."""

    tensors: dict
    metadata: dict = field(default_factory=dict)
    path: Path | None = None

    def _where(self) -> str:
        return str(self.path) if self.path else "checkpoint"

    @property
    def rank(self) -> int:
        return int(self.metadata["rank"])

    @property
    def components(self) -> tuple:
        return tuple(c for c in self.metadata.get("components", "").split(",") if c)

    @property
    def prompts(self) -> dict:
        return {k: self.metadata.get(f"prompt_{k}", v) for k, v in DEFAULT_PROMPTS.items()}

    @property
    def provenance(self) -> dict:
        return json.loads(self.metadata.get("provenance", "{}"))

    def has(self, component: str) -> bool:
        return component in self.components

    def attention_paths(self) -> list:
        return sorted({m["path"] for k in self.tensors if (m := _UNET_KEY.match(k))})

    def layer_state_dict(self, path: str) -> dict:
        prefix = f"unet.{path}."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def text_encoder_lora(self) -> dict:
        """``{clip module path: (down (r, in), up (out, r))}``; paths as in CLIP checkpoints."""
        out = {}
        for key, value in self.tensors.items():
            m = _TE_KEY.match(key)
            if m:
                out.setdefault(m["module"], {})[m["part"]] = value
        return {k: (v["down"], v["up"]) for k, v in out.items()}

    def load_into_layers(self, layers: torch.nn.ModuleDict) -> None:
        """Copy into ``layers`` (keyed by ``layers.layer_key`` of the attention path), checking that the
        file and the model have the same attention modules and widths."""
        keys_by_path = {layer_path(key): key for key in layers}
        model_paths, file_paths = set(keys_by_path), set(self.attention_paths())
        if model_paths != file_paths:
            missing, unexpected = model_paths - file_paths, file_paths - model_paths
            raise CheckpointError(
                f"{self._where()} does not fit this UNet: "
                + (f"no weights for attention modules {_short_list(missing)}; " if missing else "")
                + (f"weights for attention modules the UNet does not have: {_short_list(unexpected)}; " if unexpected else "")
                + "was it trained for another base model?"
            )
        mismatched = []
        for path, key in keys_by_path.items():
            target = layers[key].state_dict()
            source = self.layer_state_dict(path)
            for name, tensor in source.items():
                if name in target and target[name].shape != tensor.shape:
                    mismatched.append(f"{path}.{name}: file {tuple(tensor.shape)} vs model {tuple(target[name].shape)}")
            if not mismatched:
                layers[key].load_state_dict(source, strict=True)
        if mismatched:
            raise CheckpointError(
                f"{self._where()} has shapes that do not fit this UNet ({_short_list(mismatched, 3)}); "
                "it was made for a model with other channel widths"
            )


def make_metadata(
    rank: int,
    components,
    prompts: dict | None = None,
    provenance: dict | None = None,
    base_model: str = BASE_MODEL,
) -> dict:
    prompts = {**DEFAULT_PROMPTS, **(prompts or {})}
    return {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "base_model": base_model,
        "rank": str(rank),
        "components": ",".join(c for c in COMPONENTS if c in set(components)),
        **{f"prompt_{k}": v for k, v in prompts.items()},
        "provenance": json.dumps(provenance or {}, sort_keys=True),
    }


def layers_to_tensors(layers: torch.nn.ModuleDict) -> dict:
    """Checkpoint tensors of trained layers (keyed by ``layers.layer_key`` of the attention path)."""
    return {
        f"unet.{layer_path(key)}.{name}": t.detach()
        for key, module in layers.items()
        for name, t in module.state_dict().items()
    }


def save_checkpoint(
    path: Path, checkpoint: DualAnoDiffCheckpoint, dtype: torch.dtype = torch.float16, overwrite: bool = True
) -> Path:
    """Validate, then write atomically (temporary file in the same folder, then rename)."""
    validate(checkpoint)
    tensors = {k: v.detach().to("cpu", dtype) for k, v in checkpoint.tensors.items()}
    metadata = {**checkpoint.metadata, "dtype": str(dtype).replace("torch.", "")}
    return atomic_save_safetensors(tensors, Path(path), metadata, overwrite=overwrite)


def read_safetensors(path: Path) -> tuple[dict, dict]:
    """Tensors and metadata of a safetensors file, with a clear error for a damaged file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(
            f"{path} is not a readable .safetensors file ({exc}); it may be truncated or still downloading, "
            "get the file again"
        ) from exc
    return tensors, metadata


def load_checkpoint(path: Path) -> DualAnoDiffCheckpoint:
    """Read and validate a DualAnoDiff checkpoint; tensors come back in fp32."""
    return _ours(Path(path), *read_safetensors(path))


def _ours(path: Path, tensors: dict, metadata: dict) -> DualAnoDiffCheckpoint:
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a DualAnoDiff checkpoint ({_what_is_it(tensors)})")
    ckpt = DualAnoDiffCheckpoint({k: v.float() for k, v in tensors.items()}, metadata, path)
    validate(ckpt)
    return ckpt


def open_checkpoint(path: Path) -> DualAnoDiffCheckpoint:
    """A DualAnoDiff checkpoint from our ``.safetensors`` files and the reference's
    ``pytorch_lora_weights.{safetensors,bin}`` alike (reference files are converted in memory)."""
    from .reference_import import convert_reference, looks_like_reference, reference_to_checkpoint

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        if path.suffix.lower() == ".bin" and path.is_file():
            return convert_reference(path)
        raise CheckpointError(f"{path}: expected a DualAnoDiff .safetensors checkpoint or a reference "
                              "pytorch_lora_weights.safetensors/.bin file")
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT_NAME and (looks_like_reference(path) or _is_reference(tensors)):
        return reference_to_checkpoint(tensors, source=str(path))
    return _ours(path, tensors, metadata)


def _is_reference(tensors: dict) -> bool:
    return any(".processor.to_q_lora." in k or ".processor.temporal_" in k for k in tensors)


def _what_is_it(tensors: dict) -> str:
    keys = list(tensors)
    if _is_reference(tensors):
        return "it looks like a reference-implementation file: import it with `dualanodiff convert`"
    if any(k.startswith(("lora_unet_", "lora_te_")) for k in keys):
        return "it looks like an ordinary LoRA: load it with the two-LoRA loader or ComfyUI's LoraLoader"
    return "no DualAnoDiff metadata in the file header"


def validate(ckpt: DualAnoDiffCheckpoint) -> None:
    """Check metadata, key structure, shapes and values; raise CheckpointError naming the problem."""
    where, meta = ckpt._where(), ckpt.metadata
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{where}: format_version {meta.get('format_version')!r} is not a number") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} uses checkpoint format version {version}, newer than this DualAnoDiff reads "
            f"({FORMAT_VERSION}); update the DualAnoDiff pack"
        )
    if meta.get("base_model") != BASE_MODEL:
        raise CheckpointError(
            f"{where} is for base model family {meta.get('base_model')!r}; DualAnoDiff supports only "
            f"Stable Diffusion 1.x ({BASE_MODEL!r})"
        )
    unknown = set(ckpt.components) - set(COMPONENTS)
    if unknown:
        raise CheckpointError(f"{where} lists unknown components {_short_list(unknown)}")
    if "rank" not in meta or not meta["rank"].isdigit():
        raise CheckpointError(f"{where}: metadata 'rank' is missing or not a number")
    _check_keys(ckpt)
    _check_shapes(ckpt)
    bad = [k for k, v in ckpt.tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{where} holds NaN or Inf values in {_short_list(bad, 3)}; the training run diverged")


def _check_keys(ckpt: DualAnoDiffCheckpoint) -> None:
    where = ckpt._where()
    unexpected = [k for k in ckpt.tensors if not (_UNET_KEY.match(k) or _TE_KEY.match(k))]
    paths = ckpt.attention_paths()
    if not paths:
        raise CheckpointError(f"{where} holds no UNet attention weights")
    expected = set()
    for path in paths:  # the names do not depend on the widths
        names = expected_tensors(AttentionDims(path, 1, 1, 1), 1, ckpt.has("saim"), ckpt.has("bcm"))
        expected |= {f"unet.{path}.{name}" for name in names}
    if ckpt.has("text_encoder_lora"):
        modules = {m["module"] for k in ckpt.tensors if (m := _TE_KEY.match(k))}
        if not modules:
            raise CheckpointError(f"{where} lists a text-encoder LoRA but holds no text_encoder.* weights")
        expected |= {f"text_encoder.{m}.{p}" for m in modules for p in ("down", "up")}
    present = set(ckpt.tensors)
    unexpected += sorted(present - expected - set(unexpected))
    missing = expected - present
    if missing or unexpected:
        raise CheckpointError(
            f"{where} is incomplete or mixed up: "
            + (f"missing keys {_short_list(missing)}; " if missing else "")
            + (f"unexpected keys {_short_list(unexpected)}; " if unexpected else "")
            + "re-export or re-convert it"
        )


def _dims_in_file(path: str, sd: dict) -> AttentionDims:
    """The attention widths the file's LoRA was made for (read from its q and k LoRA)."""
    up = sd["lora_q.up"]
    return AttentionDims(path, query_dim=sd["lora_q.down"].shape[-1], context_dim=sd["lora_k.down"].shape[-1],
                         inner_dim=up.shape[-2] if up.ndim >= 2 else -1)


def _check_shapes(ckpt: DualAnoDiffCheckpoint) -> None:
    """Every UNet tensor has the shape the layers built for the file's widths and rank have."""
    where, problems = ckpt._where(), []
    for path in ckpt.attention_paths():
        sd = ckpt.layer_state_dict(path)
        dims = _dims_in_file(path, sd)
        if not dims.self_attention and dims.context_dim in OTHER_FAMILIES:
            raise CheckpointError(
                f"{where} was trained on a {OTHER_FAMILIES[dims.context_dim]} model (text width {dims.context_dim}); "
                "DualAnoDiff supports Stable Diffusion 1.x only"
            )
        expect = expected_tensors(dims, ckpt.rank, ckpt.has("saim"), ckpt.has("bcm"))
        problems += [f"{path}.{name}: {tuple(sd[name].shape)} expected {shape}"
                     for name, shape in expect.items() if tuple(sd[name].shape) != shape]
    for module, (down, up) in ckpt.text_encoder_lora().items():
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            problems.append(f"text_encoder.{module}: down {tuple(down.shape)}, up {tuple(up.shape)}")
    if problems:
        raise CheckpointError(f"{where} has inconsistent shapes: {_short_list(problems, 3)}")
