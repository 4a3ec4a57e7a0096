"""The pack as a user meets it: ComfyUI v0.3.75's server log and API, and its web UI in headless Chromium
(template browser, canvas, node library search, widget defaults and tooltips), plus screenshots."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from PIL import Image
from pack_info import PACK_NAME, UI_DIR, WORKFLOWS, api_twin, pack_nodes, ui_workflow
from thumbnails import graph_box, thumbnail

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _inputs(node_def: dict) -> dict:
    spec = node_def["input"]
    return {**spec.get("required", {}), **spec.get("optional", {})}


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _combo_options(spec) -> list:
    return spec[0] if isinstance(spec[0], list) else _opts(spec).get("options", [])


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


# --- server ---------------------------------------------------------------------------------------

def test_server_log_shows_the_pack_imported_without_errors(server):
    log = server.log()
    path = f"custom_nodes/{PACK_NAME}"
    timing = [line for line in log.splitlines() if re.search(r"^\s*[\d.]+ seconds.*" + re.escape(path) + "$", line)]
    assert timing, f"the pack is missing from ComfyUI's import times:\n{log[-3000:]}"
    assert not any("IMPORT FAILED" in line for line in timing), timing
    assert "Cannot import" not in "\n".join(l for l in log.splitlines() if PACK_NAME in l), log[-3000:]
    pack_tracebacks = [tb for tb in _tracebacks(log) if PACK_NAME in tb]
    assert not pack_tracebacks, pack_tracebacks[0]


def _tracebacks(log: str) -> list[str]:
    """Each Python traceback in a log: its header, the indented frames, and the exception line."""
    found, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            current = [line]
        elif current is not None:
            current.append(line)
            if line and not line[0].isspace():
                found.append("\n".join(current))
                current = None
    return found


def test_object_info_lists_every_node(object_info, pack_node_types):
    missing = sorted(set(pack_node_types) - set(object_info))
    assert not missing, f"/object_info lacks {missing}"
    for node_type, display in pack_node_types.items():
        info = object_info[node_type]
        assert info["display_name"] == display
        assert info["category"].startswith("DualAnoDiff")
        assert info["python_module"].endswith(PACK_NAME), info["python_module"]
        assert info.get("description"), f"{node_type} has no DESCRIPTION (the node's tooltip)"


def test_template_endpoint_lists_and_serves_the_example_workflows(server):
    listing = server.get("/api/workflow_templates")
    assert sorted(listing.get(PACK_NAME, [])) == WORKFLOWS, listing
    assert set(WORKFLOWS) >= {"dualanodiff_basic", "dualanodiff_bcm", "dualanodiff_controlnet_lora"}
    for name in WORKFLOWS:
        assert server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.json") == ui_workflow(name)
        status, _ = server.request("GET", f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert status == 200, f"thumbnail {name}.jpg not served"
        assert (UI_DIR / f"{name}.jpg").is_file()


# --- web UI ---------------------------------------------------------------------------------------

def test_template_browser_lists_the_pack_and_its_workflows(ui):
    found = ui.template_names(PACK_NAME)
    assert found["count"] == len(WORKFLOWS), found
    assert set(WORKFLOWS) <= set(found["titles"]), found
    ui.close_dialogs()


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_opens_from_template_browser(ui, object_info, screenshot_dir, name):
    ui.close_dialogs()
    mark = ui.mark()
    ui.load_template(PACK_NAME, name)
    problems = ui.problems(mark)
    assert not problems, f"opening {name} from the template browser:\n" + "\n".join(problems)

    nodes = {str(n["id"]): n for n in ui.graph_nodes()}
    twin = api_twin(name)
    assert set(nodes) == set(twin), f"canvas nodes {sorted(nodes)} != workflow nodes {sorted(twin)}"
    unknown = [f"#{i} {n['type']}" for i, n in nodes.items() if not n["registered"]]
    assert not unknown, f"missing node types on the canvas: {unknown}"
    for node_id, api_node in twin.items():
        node = nodes[node_id]
        assert node["type"] == api_node["class_type"]
        for input_name, spec in _inputs(object_info[node["type"]]).items():
            value = api_node["inputs"].get(input_name)
            if _is_widget(spec) and not isinstance(value, list):
                assert input_name in node["widgets"], f"#{node_id} {node['type']}: no widget {input_name}"
                assert _same(node["widgets"][input_name], value), (
                    f"#{node_id} {node['type']}.{input_name} shows {node['widgets'][input_name]!r}, "
                    f"workflow has {value!r}")
            elif isinstance(value, list):  # a link: the socket must be connected on the canvas
                linked = [i for i in node["inputs"] if i["name"] == input_name and i["link"] is not None]
                assert linked, f"#{node_id} {node['type']}.{input_name} is not connected on the canvas"

    ui.frame_graph()
    shot = ui.screenshot(screenshot_dir / f"{name}.png")
    assert shot.stat().st_size > 20_000, "screenshot looks empty"
    assert not ui.problems(mark), ui.problems(mark)

    # the shipped thumbnail is this screenshot, cut as scripts/make_thumbnails.py cuts it
    fresh = screenshot_dir / f"{name}.thumbnail.jpg"
    thumbnail(shot, graph_box(ui), fresh)
    with Image.open(fresh) as a, Image.open(UI_DIR / f"{name}.jpg") as b:
        assert b.format == "JPEG" and a.size == b.size, (
            f"example_workflows/{name}.jpg is {b.size}, a thumbnail of the current screenshot is {a.size}: "
            "run `.venv/bin/python scripts/make_thumbnails.py`")
        diff = np.abs(np.asarray(a.convert("RGB"), np.float32) - np.asarray(b.convert("RGB"), np.float32)).mean()
    assert diff < 6.0, (f"example_workflows/{name}.jpg differs from a screenshot of the workflow as it opens "
                        f"now (mean abs difference {diff:.1f}/255): run `.venv/bin/python scripts/make_thumbnails.py`")


def test_node_library_search_finds_every_node(ui, pack_node_types):
    ui.close_dialogs()
    listed = ui.search_node_library("DualAnoDiff")
    missing = sorted(set(pack_node_types.values()) - set(listed))
    assert not missing, f"node library search 'DualAnoDiff' lists {listed}, not {missing}"
    ui.close_sidebar()


@pytest.fixture(scope="module")
def blank_canvas(ui):
    ui.close_dialogs()
    ui.close_sidebar()
    ui.new_blank_workflow()
    return ui


@pytest.mark.parametrize("node_type", sorted(pack_nodes()))
def test_fresh_node_shows_defaults_and_tooltips(blank_canvas, object_info, node_type):
    ui = blank_canvas
    mark = ui.mark()
    ui.page.evaluate("app.graph.clear()")
    node_id = ui.add_node(node_type, pos=(300, 200))
    node = next(n for n in ui.graph_nodes() if n["id"] == node_id)
    assert node["registered"]
    problems = []
    for input_name, spec in _inputs(object_info[node_type]).items():
        opts = _opts(spec)
        tooltip = (opts.get("tooltip") or "").strip()
        if not tooltip:
            problems.append(f"{input_name}: no tooltip")
        if _is_widget(spec):
            if input_name not in node["widgets"]:
                problems.append(f"{input_name}: no widget")
                continue
            shown = node["widgets"][input_name]
            if isinstance(spec[0], list) or spec[0] == "COMBO":
                options = _combo_options(spec)
                expected = opts.get("default", options[0] if options else None)
                ok = _same(shown, expected) if options else shown in (None, "")
            elif "default" not in opts and spec[0] != "STRING":
                problems.append(f"{input_name}: declares no default")
                continue
            else:
                expected = opts.get("default", "")
                ok = _same(shown, expected)
            if not ok:
                problems.append(f"{input_name}: shows {shown!r}, default is {expected!r}")
        hovered = ui.hover_tooltip(node_id, input_name) if tooltip else None
        if tooltip and hovered != tooltip:
            problems.append(f"{input_name}: hovering shows {hovered!r}, expected the tooltip {tooltip!r}")
    problems += ui.problems(mark)
    assert not problems, f"{node_type}:\n" + "\n".join(problems)
