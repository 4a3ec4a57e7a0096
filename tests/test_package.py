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


def test_suite_collects_in_a_checkout_whose_name_is_no_identifier(tmp_path):
    """Users clone into custom_nodes/comfyui-dualanodiff: pytest must not import the pack's root
    __init__.py under that name (it did, and every test errored with a relative-import failure)."""
    checkout = tmp_path / "comfyui-dualanodiff-clone"
    (checkout / "tests").mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "pyproject.toml", "tests/checkout_root_plugin.py"):
        (checkout / name).write_bytes((REPO / name).read_bytes())
    (checkout / "tests" / "test_probe.py").write_text("def test_probe():\n    assert 1 + 1 == 2\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=checkout,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout
