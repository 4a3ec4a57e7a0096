"""UI-format workflow (what ComfyUI's frontend saves) -> API format, using the installed node
definitions the way the frontend does: widget values are stored positionally, in INPUT_TYPES order. A
workflow saved before a node gained a widget (an optional input appended at the end) stores fewer values;
the frontend then shows, and queues, that widget's default, and so does this conversion."""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _widget_inputs(node_class) -> list:
    """[(name, extra UI-only values after it, section, default)] for every widget input, in frontend order."""
    spec = node_class.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            options = entry[1] if len(entry) > 1 else {}
            if isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES:
                extra = 0
                if kind == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
                    extra = 1
                if options.get("image_upload"):
                    extra = 1
                default = options.get("default", kind[0] if isinstance(kind, (list, tuple)) and kind else None)
                out.append((name, extra, section, default))
    return out


def ui_to_api(workflow: dict, node_classes: dict) -> dict:
    links = {lk[0]: lk for lk in workflow["links"]}
    api = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        cls = node_classes[node["type"]]
        inputs = {}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                lk = links[slot["link"]]
                inputs[slot["name"]] = [str(lk[1]), lk[2]]
        values = list(node.get("widgets_values", []))
        pos = 0
        for name, extra, section, default in _widget_inputs(cls):
            if pos >= len(values):
                if section != "optional" or default is None:
                    raise ValueError(f"node {node['id']} ({node['type']}): no stored value for widget {name!r}")
                if name not in inputs:
                    inputs[name] = default  # saved before the widget existed: the frontend's default
                continue
            if name not in inputs:
                inputs[name] = values[pos]
            pos += 1 + extra
        if pos != len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} stored widget values, "
                             f"the definition has {pos}")
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api
