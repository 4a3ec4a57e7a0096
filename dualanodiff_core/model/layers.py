"""Trainable DualAnoDiff parameters of one attention module, as ``nn.Module``s.

Parameter names and shapes here are the checkpoint's schema (docs/checkpoint-format.md): the
checkpoint's key and shape checks ask :func:`expected_tensors`, which builds these modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from . import branch_math

LORA_TARGETS = ("q", "k", "v", "out")
BCM_HIDDEN = 320


class BranchLoRA(nn.Module):
    """Two LoRA sets (global, anomaly) for one linear map ``C_in -> C_out``; scale 1 (no alpha)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(2, rank, in_features) / rank)
        self.up = nn.Parameter(torch.zeros(2, out_features, rank))

    @property
    def rank(self) -> int:
        return self.down.shape[1]

    def delta(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Each row's branch delta; ``scale`` has one entry per row of a group (2 for pairs, 3 for
        triples with a BCM background row, which takes the global branch)."""
        down, up = self.down, self.up
        if scale.shape[0] == branch_math.TRIPLE:
            down = torch.cat((down, down[:1]))
            up = torch.cat((up, up[:1]))
        return branch_math.branch_lora_delta(x, down, up, scale)


class SAIM(nn.Module):
    """Self-attention interaction module; default PyTorch init as in the reference (not zero)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.qkv = nn.Linear(channels, 3 * channels)  # q, k, v stacked along the output
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, o: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return branch_math.saim_inference(
                o, self.norm.weight, self.norm.bias, self._folded(), self.proj_out.weight, self.proj_out.bias,
                strength=strength, eps=self.norm.eps,
            )
        return branch_math.saim(
            o,
            self.norm.weight, self.norm.bias,
            self.proj_in.weight, self.proj_in.bias,
            self.qkv.weight, self.qkv.bias,
            self.proj_out.weight, self.proj_out.bias,
            strength=strength, eps=self.norm.eps,
        )

    def _folded(self) -> tuple:
        """Folded inference weights, recomputed whenever a weight changed (optimizer step, load, .to)."""
        params = (self.proj_in.weight, self.proj_in.bias, self.qkv.weight, self.qkv.bias)
        key = tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in params)
        if getattr(self, "_fold_key", None) != key:
            self._fold = tuple(t.to(params[0].dtype) for t in branch_math.fold_saim(*(p.float() for p in params)))
            self._fold_key = key
        return self._fold


def _version(t: torch.Tensor) -> int:
    """In-place update counter; inference-mode tensors (ComfyUI samples under inference_mode) have
    none, and outside inference mode they cannot be updated in place anyway."""
    try:
        return t._version
    except RuntimeError:
        return -1


class BCMFusion(nn.Module):
    """Background compensation for one self-attention: gated MLP of the background tokens."""

    def __init__(self, channels: int, hidden: int = BCM_HIDDEN):
        super().__init__()
        self.mlp_in = nn.Linear(channels, hidden)
        self.mlp_out = nn.Linear(hidden, channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h``: triples ``[g, a, r]`` (see branch_math)."""
        return branch_math.bcm_fuse_kv_input(
            h,
            self.mlp_in.weight, self.mlp_in.bias, self.mlp_out.weight, self.mlp_out.bias,
            self.gamma,
        )


class DualAttentionLayers(nn.Module):
    """Everything DualAnoDiff adds to one attention module (attn1 or attn2)."""

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        inner_dim: int,
        rank: int,
        saim: bool = True,
        bcm: bool = False,
    ):
        super().__init__()
        self.lora_q = BranchLoRA(query_dim, inner_dim, rank)
        self.lora_k = BranchLoRA(context_dim, inner_dim, rank)
        self.lora_v = BranchLoRA(context_dim, inner_dim, rank)
        self.lora_out = BranchLoRA(inner_dim, query_dim, rank)
        self.saim = SAIM(query_dim) if saim else None
        self.bcm = BCMFusion(query_dim) if bcm else None

    def lora(self, target: str) -> BranchLoRA:
        return getattr(self, f"lora_{target}")


@dataclass(frozen=True)
class AttentionDims:
    """What DualAnoDiff needs to know of one attention module of a UNet."""

    path: str  # diffusers path, e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1
    query_dim: int
    context_dim: int
    inner_dim: int

    @property
    def self_attention(self) -> bool:
        return self.path.rsplit(".", 1)[-1] == "attn1"


def layer_key(path: str) -> str:
    """The key of an attention path in an ``nn.ModuleDict`` of layers (keys cannot hold dots)."""
    return path.replace(".", "__")


def layer_path(key: str) -> str:
    return key.replace("__", ".")


def dual_layers(dims: AttentionDims, rank: int, saim: bool = True, bcm: bool = False) -> DualAttentionLayers:
    """The layers of one attention module; BCM only ever on self-attention."""
    return DualAttentionLayers(dims.query_dim, dims.context_dim, dims.inner_dim, rank,
                               saim=saim, bcm=bcm and dims.self_attention)


def build_dual_layers(dims: Iterable[AttentionDims], rank: int, saim: bool = True, bcm: bool = False) -> nn.ModuleDict:
    """Fresh layers for every attention module, keyed by :func:`layer_key` of its path."""
    return nn.ModuleDict({layer_key(d.path): dual_layers(d, rank, saim, bcm) for d in dims})


def expected_tensors(dims: AttentionDims, rank: int, saim: bool, bcm: bool) -> dict[str, tuple]:
    """``{parameter name: shape}`` of the layers of one attention module (built on the meta device)."""
    with torch.device("meta"):
        module = dual_layers(dims, rank, saim, bcm)
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}
