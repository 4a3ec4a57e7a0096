"""Train/validation split of an export: each image's own draw, from a hash of the seed and its name.

An image goes to ``val`` when ``sha256("<seed>:<name>")``, read as a fraction of 2**64 from its first 8
bytes, is below the validation share. The draw depends on nothing else, so exporting again, or adding
samples to an export later, never moves an image that is already there; the share is met on average
(a 10 % share of 1,000 images puts about 100 in ``val``, of 5 images possibly none).
"""
from __future__ import annotations

import hashlib

SPLITS = ("train", "val")


def split_of(name: str, val_share: float, seed: int) -> str:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2.0 ** 64 < val_share else "train"
