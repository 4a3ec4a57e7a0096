"""Queueing through ComfyUI's real `/prompt` endpoint: the basic example workflow is refused with
ComfyUI's own validation error while its model files are absent, and with a tiny model put in place by
the test, a graph of the pack's nodes executes through the server and writes its dataset to disk."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from pack_info import BASIC, api_twin
from PIL import Image

MISSING_FILES = {"1": ("ckpt_name", "v1-5-pruned-emaonly.safetensors"),
                 "10": ("checkpoint", "bottle_broken_large.safetensors")}


def _queue(server, prompt: dict):
    return server.request("POST", "/api/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})


def test_basic_workflow_without_model_files_is_refused_by_validation(server):
    status, body = _queue(server, api_twin(BASIC))
    assert status == 400, (status, body)
    assert isinstance(body, dict), f"not ComfyUI's JSON error: {body!r}"
    assert "Traceback" not in str(body), body
    assert body["error"]["type"] == "prompt_outputs_failed_validation", body["error"]
    for node_id, (input_name, filename) in MISSING_FILES.items():
        errors = body["node_errors"].get(node_id, {}).get("errors", [])
        assert any(e["type"] == "value_not_in_list" and filename in e["details"] and input_name in e["details"]
                   for e in errors), f"node {node_id}: {errors}"
    # nothing ran
    assert server.get("/api/queue")["queue_running"] == []


def _wait_for_history(server, prompt_id: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = server.get(f"/api/history/{prompt_id}")
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"].get("status_str") in ("success", "error")):
            return entry
        time.sleep(0.5)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


@pytest.fixture(scope="module")
def tiny_inputs(server):
    """A global image, an anomaly-part image (a dark defect on mid-grey) in the server's input folder,
    and a tiny U-2-Net (the real u2netp architecture, seeded random weights, 4.7 MB) in models/u2net."""
    import torch

    from dualanodiff_core.masks.u2net import U2NETP

    size = 64
    rng = np.random.default_rng(0)
    whole = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    part = np.full((size, size, 3), 128, np.uint8)
    part[16:32, 8:40] = 20
    Image.fromarray(whole).save(server.dir("input") / "browser_global.png")
    Image.fromarray(part).save(server.dir("input") / "browser_anomaly.png")
    expected = np.zeros((size, size), np.uint8)
    expected[16:32, 8:40] = 255
    torch.manual_seed(0)
    u2net_dir = server.dir("models") / "u2net"
    u2net_dir.mkdir(parents=True, exist_ok=True)
    torch.save(U2NETP().state_dict(), u2net_dir / "u2netp.pth")
    return expected


def test_pack_nodes_execute_through_the_server(server, tiny_inputs):
    prompt = {
        "g": {"class_type": "LoadImage", "inputs": {"image": "browser_global.png"}},
        "a": {"class_type": "LoadImage", "inputs": {"image": "browser_anomaly.png"}},
        "u": {"class_type": "DualAnoDiffU2NetLoader", "inputs": {"model_name": "u2netp.pth"}},
        "m": {"class_type": "DualAnoDiffExtractMask", "inputs": {
            "anomaly_image": ["a", 0], "method": "threshold", "threshold": 0.0, "grow": 0, "blur": 0.0}},
        "mu": {"class_type": "DualAnoDiffExtractMask", "inputs": {
            "anomaly_image": ["a", 0], "method": "u2net", "threshold": 0.0, "grow": 0, "blur": 0.0,
            "u2net": ["u", 0]}},
        "pv": {"class_type": "PreviewImage", "inputs": {"images": ["mu", 2]}},
        "s": {"class_type": "DualAnoDiffSaveDataset", "inputs": {
            "images": ["g", 0], "masks": ["m", 0], "anomaly_images": ["a", 0], "object_name": "bottle",
            "defect_name": "scratch", "layout": "both", "folder": "browser_test"}},
    }
    status, body = _queue(server, prompt)
    assert status == 200 and not body.get("node_errors"), (status, body)
    entry = _wait_for_history(server, body["prompt_id"])
    messages = entry["status"].get("messages", [])
    assert entry["status"]["status_str"] == "success", messages
    assert entry["outputs"].keys() >= {"s", "pv"}, entry["outputs"].keys()

    root = server.dir("output") / "browser_test" / "bottle"
    for sub in ("image", "fg", "mask"):
        assert (root / "scratch" / sub / "0.png").is_file(), sorted(root.rglob("*"))
    assert (root / "test" / "scratch" / "000.png").is_file()
    assert (root / "ground_truth" / "scratch" / "000_mask.png").is_file()
    mask = np.array(Image.open(root / "scratch" / "mask" / "0.png").convert("L"))
    np.testing.assert_array_equal(mask, tiny_inputs)
    saved_global = np.array(Image.open(root / "scratch" / "image" / "0.png").convert("RGB"))
    np.testing.assert_array_equal(saved_global, np.array(Image.open(server.dir("input") / "browser_global.png")))
    preview = entry["outputs"]["pv"]["images"][0]
    assert (server.dir(preview["type"]) / preview["subfolder"] / preview["filename"]).is_file()
    assert "Traceback" not in server.log().split("got prompt")[-1]
