"""The example workflows: UI format 0.4 with thumbnails, an API-format twin each that agrees with the
installed node definitions, and a structural validation by ComfyUI (placeholder model files: the
workflows name real SD 1.5 files that only run where weights and a GPU exist)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import harness
from workflow_convert import ui_to_api
from workflow_fixtures import pack_module

REPO = Path(__file__).resolve().parents[2]
UI_DIR = REPO / "example_workflows"
API_DIR = Path(__file__).resolve().parent / "workflow_api"
NAMES = sorted(p.stem for p in UI_DIR.glob("*.json"))

FOLDER_OF = {
    "ckpt_name": "checkpoints", "lora_name": "loras", "control_net_name": "controlnet",
    "checkpoint": "dualanodiff", "model_name": "u2net",
}


def test_there_are_the_three_example_workflows():
    assert {"dualanodiff_basic", "dualanodiff_bcm", "dualanodiff_controlnet_lora"} <= set(NAMES)
    assert sorted(p.stem for p in API_DIR.glob("*.json")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_workflow_is_ui_format_with_thumbnail(name):
    ui = json.loads((UI_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert ui["version"] == 0.4 and ui["nodes"] and ui["links"]
    assert (UI_DIR / f"{name}.jpg").is_file()
    from PIL import Image

    with Image.open(UI_DIR / f"{name}.jpg") as img:
        assert img.format == "JPEG"


@pytest.fixture(scope="module")
def placeholders(pack):
    """Empty model files and tiny input images under the names the workflows use."""
    import folder_paths
    from PIL import Image

    pack_module(pack, "nodes.model_folders").register_model_folders()
    for name in NAMES:
        for node in json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8")).values():
            for key, value in node["inputs"].items():
                if key in FOLDER_OF and isinstance(value, str):
                    target = Path(folder_paths.get_folder_paths(FOLDER_OF[key])[0]) / value
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()
                if node["class_type"] == "LoadImage" and key == "image":
                    Image.new("RGB", (8, 8)).save(Path(folder_paths.get_input_directory()) / value)
    folder_paths.filename_list_cache.clear()


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_twins_agree(pack, placeholders, name):
    import nodes

    ui = json.loads((UI_DIR / f"{name}.json").read_text(encoding="utf-8"))
    twin = json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert ui_to_api(ui, nodes.NODE_CLASS_MAPPINGS) == twin


@pytest.mark.parametrize("name", NAMES)
def test_workflow_validates_against_installed_nodes(pack, placeholders, name):
    twin = json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8"))
    ok, errors = harness.validate(twin)
    assert ok, errors
    assert any(n["class_type"] == "DualAnoDiffSaveDataset" for n in twin.values())
