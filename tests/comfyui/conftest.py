"""Session setup for tests that run the pack inside a real ComfyUI copy (see harness.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def comfy_root(tmp_path_factory):
    """The ComfyUI copy under test, imported and redirected into a tmp dir. Fails (never skips)
    when no copy is named, so a run that silently tests nothing cannot pass."""
    root = os.environ.get(harness.ENV_VAR)
    if not root:
        pytest.fail(f"ComfyUI tests need a ComfyUI copy: {harness.FETCH_HINT}", pytrace=False)
    yield harness.setup_comfy(root, tmp_path_factory.mktemp("comfyui"))
    harness.teardown()


@pytest.fixture(scope="session")
def pack(comfy_root):
    """This repo loaded as a custom node by ComfyUI's own loader (once per session)."""
    return harness.load_pack(REPO)
