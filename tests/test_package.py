"""Packaging rules: the core never imports ComfyUI, imports stay cheap."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_core_never_imports_comfy():
    for path in (REPO / "dualanodiff_core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in {"comfy", "comfy_extras", "folder_paths", "nodes", "execution"}, f"{path}: {name}"


def test_importing_the_core_package_does_not_import_torch():
    code = "import sys, dualanodiff_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pyproject_declares_console_command_and_comfy_registry():
    import pytest

    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["scripts"]["dualanodiff"] == "dualanodiff_core.cli:main"
    assert meta["tool"]["comfy"]["PublisherId"]
    requirements = (REPO / "requirements.txt").read_text(encoding="utf-8").lower()
    assert not any(line.split("=")[0].split(">")[0].strip() in {"torch", "torchvision", "numpy"}
                   for line in requirements.splitlines() if not line.startswith("#"))
