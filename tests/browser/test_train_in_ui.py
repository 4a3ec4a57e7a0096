"""The train-and-generate workflow run through ComfyUI's real web UI: opened from the template browser,
its Load Checkpoint swapped for the test-only tiny model (no SD 1.5 weights here), the user's defect
folder in ComfyUI's input folder, **Run** clicked. The UI receives the Train node's step-by-step progress
(with the loss curve as its preview) and then the images; the checkpoint and the dataset are on disk."""
from __future__ import annotations

import json
import shutil

import pytest
from pack_info import PACK_NAME, api_twin
from PIL import Image
from synthetic_data import write_defect_folder

WORKFLOW = "dualanodiff_train_and_generate"
TRAIN_NODE, LATENT_NODE, SAMPLER_NODE, CHECKPOINT_NODE = 61, 14, 20, 1
STEPS = 6
SETTINGS = {TRAIN_NODE: {"steps": STEPS, "resolution": 64, "rank": 4, "pairs_per_step": 2, "learning_rate": 1e-3,
                         "precision": "fp32", "save_precision": "fp32", "name": "browser_defect"},
            LATENT_NODE: {"width": 64, "height": 64, "batch_size": 2},
            SAMPLER_NODE: {"steps": 3}}

SWAP_CHECKPOINT = """(() => {
    const old = app.graph.getNodeById(%d);
    const n = LiteGraph.createNode('TinySD15Checkpoint'); n.pos = [...old.pos]; app.graph.add(n);
    const link = id => app.graph.links.get ? app.graph.links.get(id) : app.graph.links[id];
    const before = old.outputs.map(o => (o.links || []).length);
    old.outputs.forEach((out, slot) => (out.links || []).slice().map(link).forEach(
        l => n.connect(slot, app.graph.getNodeById(l.target_id), l.target_slot)));
    app.graph.remove(old);
    return [before, n.outputs.map(o => (o.links || []).length)];
})()"""

SET_WIDGETS = """(() => { const values = %s; const missing = [];
    for (const [id, widgets] of Object.entries(values)) {
        const n = app.graph.getNodeById(Number(id));
        for (const [name, v] of Object.entries(widgets)) {
            const w = (n.widgets || []).find(w => w.name === name);
            if (!w) { missing.push(id + '.' + name); continue; }
            w.value = v; if (w.callback) w.callback(v);
        } }
    app.graph.setDirtyCanvas(true, true); return missing; })()"""

LISTEN = """(() => { window.__run = {progress: [], executed: [], titles: [], errors: []};
    app.api.addEventListener('progress', e => window.__run.progress.push(e.detail));
    app.api.addEventListener('executed', e => window.__run.executed.push(e.detail));
    app.api.addEventListener('execution_error', e => window.__run.errors.push(e.detail));
    window.__titles = setInterval(() => window.__run.titles.push(document.title), 100);
    app.api.addEventListener('b_preview', e => window.__run.previews = (window.__run.previews || 0) + 1);
    return true; })()"""


@pytest.fixture
def opened(ui, server):
    folder = server.dir("input") / api_twin(WORKFLOW)["60"]["inputs"]["folder"]
    checkpoint = server.dir("models") / "dualanodiff" / f"{SETTINGS[TRAIN_NODE]['name']}.safetensors"
    dataset = server.dir("output") / api_twin(WORKFLOW)["25"]["inputs"]["folder"]
    write_defect_folder(folder)
    ui.close_dialogs()
    ui.load_template(PACK_NAME, WORKFLOW)
    before, after = ui.page.evaluate(SWAP_CHECKPOINT % CHECKPOINT_NODE)
    assert after == before == [1, 1, 3], f"Load Checkpoint's MODEL, CLIP and VAE links {before} moved: {after}"
    missing = ui.page.evaluate(SET_WIDGETS % json.dumps({str(k): v for k, v in SETTINGS.items()}))
    assert not missing, missing
    yield ui
    # leave the UI as the other tests expect it: the changed workflow closed unsaved, a blank one active
    ui.page.evaluate("clearInterval(window.__titles)")
    ui.new_blank_workflow()
    ui.page.evaluate("(async () => { const s = app.extensionManager.workflow;"
                     " for (const w of s.openWorkflows.filter(w => w.filename === %s)) await s.closeWorkflow(w);"
                     " return true; })()" % json.dumps(WORKFLOW))
    # and the server's folders as they were (other tests read the model list)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(dataset, ignore_errors=True)
    checkpoint.unlink(missing_ok=True)


def test_train_and_generate_runs_from_the_run_button(opened, server, screenshot_dir):
    ui = opened
    mark = ui.mark()
    ui.page.evaluate(LISTEN)
    ui.page.click_text("Run", within="button")
    ui.page.wait_for("window.__run.errors.length > 0 || window.__run.executed.some(e => String(e.node) === '25')",
                     timeout=300, interval=0.5, what="the workflow finished (Save Dataset executed)")
    run = ui.page.evaluate("window.__run")
    assert not run["errors"], run["errors"][0]

    # the Train node's progress reached the UI step by step, with the loss curve as its preview
    train_steps = [p["value"] for p in run["progress"] if str(p.get("node")) == str(TRAIN_NODE)]
    print(f"Train node progress in the UI: {train_steps}; tab titles: {sorted(set(run['titles']))[:6]}")
    assert train_steps == list(range(1, STEPS + 1)), train_steps
    assert all(p["max"] == STEPS for p in run["progress"] if str(p.get("node")) == str(TRAIN_NODE))
    assert run.get("previews", 0) >= 1, "no preview image (the loss curve) reached the UI"
    assert any("%]" in t for t in run["titles"]), f"the tab title never showed the progress: {set(run['titles'])}"

    # the images reached the UI: the loss curve, the pairs and the generated images, each served by /view
    shown = {str(e["node"]): e["output"].get("images", []) for e in run["executed"]}
    assert {"62", "63", "24"} <= set(shown), sorted(shown)
    for node_id in ("62", "63", "24"):
        assert shown[node_id], f"node {node_id} showed no image"
        image = shown[node_id][0]
        path = server.dir(image["type"]) / image.get("subfolder", "") / image["filename"]
        assert path.is_file(), path
    generated = shown["24"]
    assert len(generated) == 2, generated  # batch 2 = 2 pairs, each global image previewed
    assert Image.open(server.dir(generated[0]["type"]) / generated[0]["filename"]).size == (64, 64)
    nodes_with_images = ui.page.evaluate(
        "app.graph.nodes.filter(n => (n.imgs || []).length > 0 || (app.nodeOutputs || {})[String(n.id)]).map(n => n.id)")
    assert {62, 63, 24} <= set(nodes_with_images), nodes_with_images

    # on disk: the checkpoint, and the dataset Save Dataset wrote
    assert (server.dir("models") / "dualanodiff" / "browser_defect.safetensors").is_file()
    saved = sorted(p.name for p in (server.dir("output") / api_twin(WORKFLOW)["25"]["inputs"]["folder"]).rglob("*.png")
                   if "mask" in p.parts)
    assert len(saved) >= 2, saved
    assert not ui.problems(mark), ui.problems(mark)
    ui.screenshot(screenshot_dir / "train_and_generate_after_run.png")
