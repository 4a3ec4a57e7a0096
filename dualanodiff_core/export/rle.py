"""COCO run-length encoding of region masks, written from the format's description.

A mask of height H and width W is read column by column (column-major, pixel (x, y) at ``x * H + y``) and
stored as alternating run lengths, starting with a run of background (0 when the first pixel is set); the
last run ends at the last set or unset pixel, so the lengths add up to H * W. COCO's compressed form
writes each length, from the fourth on as the difference to the length two places before, as
little-endian groups of 5 bits, each group a character ``48 + bits`` with 32 added while more groups
follow (the last group's bit 4 carries the sign).
"""
from __future__ import annotations

import numpy as np


def region_counts(labels: np.ndarray, count: int) -> list:
    """Uncompressed counts of each region 1..``count`` of a label image (one list of ints per region)."""
    h, w = labels.shape
    flat = labels.ravel(order="F")
    n = flat.size
    change = np.nonzero(flat[1:] != flat[:-1])[0] + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    values = flat[starts]
    out = []
    for k in range(1, count + 1):
        sel = values == k
        s, e = starts[sel], ends[sel]
        counts = np.empty(2 * s.size + 1, np.int64)
        counts[0:-1:2] = s - np.concatenate(([0], e[:-1]))
        counts[1::2] = e - s
        counts[-1] = n - e[-1]
        out.append(counts[:-1].tolist() if counts[-1] == 0 else counts.tolist())
    return out


def compress(counts: list) -> str:
    """COCO's compressed string of uncompressed ``counts``."""
    chars = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        while True:
            group = x & 0x1F
            x >>= 5
            more = x != -1 if group & 0x10 else x != 0
            chars.append(chr(48 + (group | 0x20 if more else group)))
            if not more:
                break
    return "".join(chars)

