"""pytest plugin: collect the checkout root as a plain folder, not as a Python package.

The root holds the node pack's ``__init__.py`` because ComfyUI imports custom nodes by folder. pytest
would collect the root as a package and import that file under the checkout's folder name, which fails
in clones like ``comfyui-dualanodiff`` (no Python identifier). Loaded from the root ``conftest.py`` as a
global plugin, because conftest hooks never apply to the conftest's own folder.
"""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path, parent):
    if Path(path).resolve() == ROOT:
        return pytest.Dir.from_parent(parent, path=Path(path))
    return None
