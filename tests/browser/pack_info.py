"""What the browser tests expect of the pack, read from the repository (never by importing the pack:
ComfyUI's `nodes` module and the pack's `nodes` package share a name)."""
from __future__ import annotations

import ast
import json

from comfy_server import PACK_NAME, REPO

UI_DIR = REPO / "example_workflows"
API_DIR = REPO / "tests" / "comfyui" / "workflow_api"
WORKFLOWS = sorted(p.stem for p in UI_DIR.glob("*.json"))
BASIC = "dualanodiff_basic"


def pack_nodes() -> dict[str, str]:
    """node type -> display name, from the `_NODES` table in nodes/__init__.py."""
    tree = ast.parse((REPO / "nodes" / "__init__.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_NODES" for t in node.targets):
            return {k.value: v.elts[1].value for k, v in zip(node.value.keys, node.value.values)}
    raise AssertionError("nodes/__init__.py has no _NODES table")


def ui_workflow(name: str) -> dict:
    return json.loads((UI_DIR / f"{name}.json").read_text(encoding="utf-8"))


def api_twin(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8"))


__all__ = ["BASIC", "PACK_NAME", "WORKFLOWS", "api_twin", "pack_nodes", "ui_workflow"]
