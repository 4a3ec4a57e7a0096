"""Import checkpoints saved by the paper's reference code (``pytorch_lora_weights.{safetensors,bin}``).

Key layout: reference-method.md section 7. Pickles are read only with ``weights_only=True``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .checkpoint import DualAnoDiffCheckpoint, make_metadata, read_safetensors, validate
from ..errors import CheckpointError
from ..torch_files import load_weights_pickle

_UNET = re.compile(r"^(?:unet\.)?(?P<path>.+\.attn[12])\.processor\.(?:chained_proc\.)?(?P<name>.+)$")
_LORA = re.compile(r"^to_(?P<t>q|k|v|out)_lora\.(?P<b>[01])\.(?P<part>down|up)\.weight$")
_SAIM = {
    "temporal_n": "saim.norm",
    "temporal_i": "saim.proj_in",
    "temporal_o": "saim.proj_out",
}
_BCM = {
    "temporal_condition_mlp.0.weight": "bcm.mlp_in.weight",
    "temporal_condition_mlp.0.bias": "bcm.mlp_in.bias",
    "temporal_condition_mlp.1.weight": "bcm.mlp_out.weight",
    "temporal_condition_mlp.1.bias": "bcm.mlp_out.bias",
    "temporal_a": "bcm.gamma",
}
_TE = re.compile(
    r"^text_encoder\.(?P<layer>(?:text_model\.)?encoder\.layers\.\d+\.self_attn)\.to_(?P<t>q|k|v|out)_lora\.(?P<part>down|up)\.weight$"
)


def read_reference_file(path: Path) -> dict:
    """State dict of a reference ``.safetensors`` or pickle ``.bin`` file (tensors only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    if not path.is_file():
        raise CheckpointError(f"reference checkpoint not found: {path}")
    state = load_weights_pickle(path, str(path), "give a .safetensors file or a pickle of plain tensors",
                                CheckpointError)
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path} does not hold a flat dict of named tensors, so it is no reference checkpoint")
    return state


def reference_to_checkpoint(state: dict, source: str = "reference", prompts: dict | None = None) -> DualAnoDiffCheckpoint:
    """Map the reference's keys onto ours (in fp32) and validate the result."""
    tensors, saim_qkv, unknown, dropped = {}, {}, [], []
    for key, value in state.items():
        value = value.float()
        m = _UNET.match(key)
        t = _TE.match(key)
        if m:
            path, name = m["path"], m["name"]
            if lm := _LORA.match(name):
                tensors.setdefault(f"unet.{path}.lora_{lm['t']}.{lm['part']}", [None, None])[int(lm["b"])] = value
            elif name.split(".")[0] in ("temporal_q", "temporal_k", "temporal_v"):
                which, param = name.split(".")
                saim_qkv.setdefault(f"unet.{path}.saim.qkv.{param}", {})[which[-1]] = value
            elif name.split(".")[0] in _SAIM:
                tensors[f"unet.{path}.{_SAIM[name.split('.')[0]]}.{name.split('.', 1)[1]}"] = value
            elif name in _BCM:
                if path.endswith("attn1"):
                    tensors[f"unet.{path}.{_BCM[name]}"] = value.reshape(1) if name == "temporal_a" else value
                else:
                    dropped.append(key)  # the reference's cross-attention BCM weights are never used
            else:
                unknown.append(key)
        elif t:
            layer = t["layer"] if t["layer"].startswith("text_model.") else f"text_model.{t['layer']}"
            tensors[f"text_encoder.{layer}.{t['t']}_proj.{t['part']}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: keys that are not in the reference layout: {sorted(unknown)[:5]}"
            + (f" ... ({len(unknown)} in all)" if len(unknown) > 5 else "")
        )
    half = [k for k, v in tensors.items() if isinstance(v, list) and None in v]
    if half:
        raise CheckpointError(f"{source}: LoRA of only one branch for {sorted(half)[:4]}; the file is incomplete")
    for key, parts in saim_qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{source}: SAIM {key} lacks temporal_{'/'.join(sorted({'q','k','v'} - set(parts)))}")
        tensors[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    for key, value in tensors.items():
        if isinstance(value, list) and value[0].shape != value[1].shape:
            path, lora = key.removeprefix("unet.").rsplit(".lora_", 1)
            t, part = lora.split(".")
            raise CheckpointError(
                f"{source}: {path}.processor.to_{t}_lora.{{0,1}}.{part}.weight differ in shape between the two "
                f"branches ({tuple(value[0].shape)} and {tuple(value[1].shape)}); the file is damaged or was "
                "not written by the reference code"
            )
    tensors = {k: torch.stack(v) if isinstance(v, list) else v for k, v in tensors.items()}
    if not any(k.startswith("unet.") for k in tensors):
        raise CheckpointError(f"{source} holds no DualAnoDiff UNet weights (no '.processor.to_q_lora.' keys)")
    rank = next(v.shape[1] for k, v in tensors.items() if k.endswith(".lora_q.down"))
    components = ["unet_lora"]
    components += ["saim"] if any(".saim." in k for k in tensors) else []
    components += ["bcm"] if any(".bcm." in k for k in tensors) else []
    components += ["text_encoder_lora"] if any(k.startswith("text_encoder.") for k in tensors) else []
    provenance = {"converted_from": source, "importer": "dualanodiff convert", "dropped_unused_keys": len(dropped)}
    ckpt = DualAnoDiffCheckpoint(tensors, make_metadata(rank, components, prompts, provenance))
    try:
        validate(ckpt)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: converted weights are not a valid DualAnoDiff checkpoint: {exc}") from None
    return ckpt


def convert_reference(path: Path, prompts: dict | None = None) -> DualAnoDiffCheckpoint:
    """Read a reference checkpoint file and return it in our format (not yet saved)."""
    path = Path(path)
    return reference_to_checkpoint(read_reference_file(path), source=str(path), prompts=prompts)


def looks_like_reference(path: Path) -> bool:
    return Path(path).name.startswith("pytorch_lora_weights")
