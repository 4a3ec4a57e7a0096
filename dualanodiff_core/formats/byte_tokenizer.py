"""A 514-token byte-level vocabulary in CLIP's file format (vocab.json + merges.txt, no merges).

Every UTF-8 byte is one token (with and without the end-of-word marker), plus start and end of
text: ``transformers.CLIPTokenizer`` reads it like CLIP's own files. Tiny demo and test models use
it; a real SD 1.5 model keeps its own 49408-token vocabulary.
"""
from __future__ import annotations

import json
from pathlib import Path

VOCAB_SIZE = 514
BOS_ID, EOS_ID = 512, 513


def byte_level_chars() -> list:
    """The byte-level BPE alphabet: printable bytes stand for themselves, the others are shifted past
    255, so that every byte is one visible character (the mapping CLIP's tokenizer applies)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def byte_vocab() -> dict:
    chars = byte_level_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": BOS_ID, "<|endoftext|>": EOS_ID})
    return vocab


def write_byte_tokenizer(folder) -> Path:
    """Write ``vocab.json`` and an empty ``merges.txt`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(byte_vocab()), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder
