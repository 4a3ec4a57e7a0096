"""Pair layout helpers: interleaving two branches into ``[g0, a0, g1, a1, ...]`` and back.

Pure tensor functions (no ComfyUI, no diffusers) used by the ComfyUI nodes and usable anywhere.
"""
from __future__ import annotations

import math

import torch

from ..errors import DualAnoDiffError


def interleave(global_rows: torch.Tensor, anomaly_rows: torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` + ``(N, ...)`` -> ``(2N, ...)`` with rows ``[g0, a0, g1, a1, ...]``."""
    if global_rows.shape != anomaly_rows.shape:
        raise DualAnoDiffError(
            f"the global and anomaly batches must have the same shape to form pairs, got "
            f"{tuple(global_rows.shape)} and {tuple(anomaly_rows.shape)}"
        )
    return torch.stack((global_rows, anomaly_rows), dim=1).reshape(-1, *global_rows.shape[1:])


def deinterleave(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(2N, ...)`` interleaved -> ``(global (N, ...), anomaly (N, ...))``; refuses an odd batch."""
    if pairs.shape[0] % 2:
        raise DualAnoDiffError(
            f"a batch of interleaved (global, anomaly) pairs must have an even number of rows, got {pairs.shape[0]}"
        )
    return pairs[0::2], pairs[1::2]


def with_background_rows(pairs: torch.Tensor, background: torch.Tensor | None = None) -> torch.Tensor:
    """Interleaved pairs ``(2N, ...)`` -> BCM triples ``(3N, ...)`` ``[g0, a0, r0, ...]``: ``r_n`` is
    ``background[n]``, or without ``background`` a copy of the global row (for the per-row context
    and timestep, which the background row shares with its global row)."""
    rows = pairs.reshape(pairs.shape[0] // 2, 2, *pairs.shape[1:])
    third = rows[:, :1] if background is None else background.reshape(rows.shape[0], 1, *pairs.shape[1:])
    return torch.cat((rows, third), dim=1).reshape(-1, *pairs.shape[1:])


def without_background_rows(triples: torch.Tensor) -> torch.Tensor:
    """BCM triples ``(3N, ...)`` -> their pair rows ``(2N, ...)``."""
    rows = triples.reshape(triples.shape[0] // 3, 3, *triples.shape[1:])
    return rows[:, :2].reshape(-1, *triples.shape[1:])


def duplicate_rows(x: torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` -> ``(2N, ...)``: each row becomes a pair of two copies (same start for both branches)."""
    return x.repeat_interleave(2, dim=0)


def repeat_tokens_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat a ``(B, T, C)`` token sequence to ``length`` tokens (a multiple of ``T``).

    Repeating every key/value token the same number of times leaves attention outputs unchanged,
    which is how token sequences of different lengths can share one batch.
    """
    t = x.shape[1]
    if length % t:
        raise DualAnoDiffError(f"cannot repeat {t} tokens to {length}")
    return x.repeat(1, length // t, 1) if length != t else x


def stack_token_rows(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Concatenate two ``(1, T_i, C)`` token sequences into ``(2, lcm(T_1, T_2), C)``."""
    if first.shape[-1] != second.shape[-1]:
        raise DualAnoDiffError(
            f"the two prompts come from different text encoders (widths {first.shape[-1]} and {second.shape[-1]})"
        )
    length = math.lcm(first.shape[1], second.shape[1])
    return torch.cat([repeat_tokens_to(first, length), repeat_tokens_to(second, length)], dim=0)
