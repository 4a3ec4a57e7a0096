"""Node definitions: registration, category, tooltips, and a cheap import."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_node_is_registered_with_category_and_tooltips(pack):
    assert len(pack.NODE_CLASS_MAPPINGS) == 15
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY.split("/")[0] == "DualAnoDiff", name
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[name].startswith("DualAnoDiff"), name
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for input_name, entry in spec.get(section, {}).items():
                assert len(entry) > 1 and entry[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        if cls.RETURN_TYPES:
            assert len(getattr(cls, "OUTPUT_TOOLTIPS", ())) == len(cls.RETURN_TYPES), name


def test_model_folders_are_added_without_overriding(pack):
    import folder_paths

    folders = pack.__name__ + ".nodes.model_folders"
    module = sys.modules[folders]
    custom = "/somewhere/else/u2net"
    paths, exts = folder_paths.folder_names_and_paths["u2net"]
    paths.insert(0, custom)
    module.register_model_folders()
    assert folder_paths.folder_names_and_paths["u2net"][0][0] == custom  # an existing (yaml) path stays first
    assert len([p for p in folder_paths.folder_names_and_paths["u2net"][0] if p.endswith("models/u2net")]) == 1
    paths.remove(custom)
    assert "sams" in folder_paths.folder_names_and_paths and "dualanodiff" in folder_paths.folder_names_and_paths


def test_importing_the_node_package_is_cheap():
    """Without ComfyUI around, importing the node classes pulls in neither torch nor the core."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pack', {str(REPO / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(REPO)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
        "print(len(m.NODE_CLASS_MAPPINGS), 'torch' in sys.modules, any(k.startswith('pack.dualanodiff_core') for k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.split() == ["15", "False", "False"], out.stdout + out.stderr
