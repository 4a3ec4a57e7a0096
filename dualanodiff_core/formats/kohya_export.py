"""Export a DualAnoDiff checkpoint's branch LoRAs as ordinary kohya-format LoRA files.

ComfyUI's stock LoraLoader (and most other tools) read these; alpha == rank keeps the scale at 1.
SAIM and BCM have no equivalent in an ordinary LoRA, so they are not exported.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import DualAnoDiffCheckpoint
from ..io_utils import atomic_save_safetensors

BRANCHES = {"global": 0, "anomaly": 1}
_DIFFUSERS_LINEAR = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}


def _kohya_pair(prefix: str, down: torch.Tensor, up: torch.Tensor, dtype) -> dict:
    return {
        f"{prefix}.lora_down.weight": down.to(dtype).contiguous(),
        f"{prefix}.lora_up.weight": up.to(dtype).contiguous(),
        f"{prefix}.alpha": torch.tensor(float(down.shape[0]), dtype=dtype),
    }


def branch_lora_tensors(ckpt: DualAnoDiffCheckpoint, branch: str, dtype=torch.float16) -> dict:
    """kohya keys ``lora_unet_<diffusers path with _>`` for one branch's UNet LoRA."""
    b = BRANCHES[branch]
    out = {}
    for path in ckpt.attention_paths():
        sd = ckpt.layer_state_dict(path)
        for t, linear in _DIFFUSERS_LINEAR.items():
            prefix = "lora_unet_" + f"{path}.{linear}".replace(".", "_")
            out.update(_kohya_pair(prefix, sd[f"lora_{t}.down"][b], sd[f"lora_{t}.up"][b], dtype))
    return out


def text_encoder_lora_tensors(ckpt: DualAnoDiffCheckpoint, dtype=torch.float16) -> dict:
    out = {}
    for module, (down, up) in ckpt.text_encoder_lora().items():
        out.update(_kohya_pair("lora_te_" + module.replace(".", "_"), down, up, dtype))
    return out


def export_loras(
    ckpt: DualAnoDiffCheckpoint,
    out_dir: Path,
    name: str,
    parts=("global", "anomaly", "text_encoder"),
    dtype=torch.float16,
    overwrite: bool = False,
) -> list:
    """Write ``<name>_<part>.safetensors`` for each part; returns the written paths."""
    out_dir = Path(out_dir)
    jobs = []
    for part in parts:
        if part == "text_encoder":
            if not ckpt.has("text_encoder_lora"):
                continue
            tensors = text_encoder_lora_tensors(ckpt, dtype)
        else:
            tensors = branch_lora_tensors(ckpt, part, dtype)
        meta = {"ss_network_dim": str(ckpt.rank), "ss_network_alpha": str(ckpt.rank),
                "dualanodiff_branch": part, "dualanodiff_source": str(ckpt.path or "")}
        jobs.append((out_dir / f"{name}_{part}.safetensors", tensors, meta))
    from ..errors import DualAnoDiffError

    existing = [str(p) for p, _, _ in jobs if p.exists()]
    if existing and not overwrite:
        raise DualAnoDiffError(f"would overwrite {existing}; choose another --output-dir/--name or pass --overwrite")
    return [atomic_save_safetensors(t, p, m, overwrite=True) for p, t, m in jobs]
