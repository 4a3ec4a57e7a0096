"""Checks of user input shared by the CLI, the Python API and the nodes.

Each check raises ``DualAnoDiffError`` with a message naming the option, the value and what to do, and
changes nothing: no folder is created, no file is touched. Entry points run all their checks before
any model loads or any file is written.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from .errors import DualAnoDiffError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def folder_name(value: str, what: str) -> str:
    """A name that becomes one folder: no separators, no '..', nothing hidden."""
    if not _NAME.match(value or "") or ".." in value:
        raise DualAnoDiffError(
            f"{what} {value!r} is not allowed as a folder name: use 1-64 letters, digits, '_', '-' or '.', starting "
            "with a letter or digit (no slashes, no '..')"
        )
    return value


def input_file(path, what: str, suffixes: tuple = ()) -> Path:
    path = Path(path)
    if not path.exists():
        raise DualAnoDiffError(f"{what} {path} does not exist")
    if not path.is_file():
        raise DualAnoDiffError(f"{what} {path} is a folder; give a file")
    if suffixes and path.suffix.lower() not in suffixes:
        raise DualAnoDiffError(f"{what} {path}: expected a {'/'.join(suffixes)} file")
    return path


def input_dir(path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DualAnoDiffError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DualAnoDiffError(f"{what} {path} is a file; give a folder")
    return path


def _file_in_the_way(path: Path) -> Path | None:
    """The path itself or the nearest existing parent, when that is a file instead of a folder."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def output_dir(path, what: str) -> Path:
    """A folder that exists or can be created: neither it nor any parent may be a file."""
    path = Path(path)
    blocker = _file_in_the_way(path)
    if blocker == path:
        raise DualAnoDiffError(f"{what} {path} is a file, so it cannot be a folder; choose another path")
    if blocker is not None:
        raise DualAnoDiffError(f"{what} {path} lies under {blocker}, which is a file; choose another path")
    return path


def output_file(path, what: str, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.is_dir():
        raise DualAnoDiffError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise DualAnoDiffError(f"{what} {path} already exists; choose another path or pass --overwrite")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        raise DualAnoDiffError(f"{what} {path} lies under {blocker}, which is a file; choose another path")
    return path


def at_least(value, minimum, what: str):
    if value is None or not value >= minimum:
        raise DualAnoDiffError(f"{what} must be at least {minimum}, got {value}")
    return value


def between(value, low, high, what: str, *, closed: bool = False):
    """``low < value < high`` (``closed``: ``low <= value <= high``)."""
    ok = value is not None and math.isfinite(value) and (low <= value <= high if closed else low < value < high)
    if not ok:
        ends = "[{}, {}]" if closed else "({}, {})"
        raise DualAnoDiffError(f"{what} must lie in {ends.format(low, high)}, got {value}")
    return value


def finite(value, what: str):
    if value is None or not math.isfinite(value):
        raise DualAnoDiffError(f"{what} must be a finite number, got {value}")
    return value


def resolution(value: int, what: str = "--resolution") -> int:
    at_least(value, 8, what)
    if value % 8:
        raise DualAnoDiffError(f"{what} {value} is not a multiple of 8 (the VAE works on 8x8 pixel blocks)")
    return value


def same_settings(previous: dict, current: dict, where, how_to_fix: str) -> None:
    """Refuse to continue a run whose recorded settings differ from this one's, naming each."""
    differ = [f"{k}: {previous[k]!r} there, {current[k]!r} now" for k in current
              if k in previous and previous[k] != current[k]]
    if differ:
        raise DualAnoDiffError(f"{where} was made with other settings ({'; '.join(differ)}); {how_to_fix}")
