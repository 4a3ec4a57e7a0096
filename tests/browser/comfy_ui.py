"""Drive ComfyUI's real web frontend (comfyui-frontend-package 1.32.9) the way a user does: the template
browser, the node library search, the canvas and its tooltips. Used by the browser tests and by
scripts/make_thumbnails.py.

Reading state goes through the frontend's own objects (`window.app`, `app.graph`, `LiteGraph`);
acting goes through real input events (clicks, typing, mouse moves) wherever a user would act.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from cdp import Chromium, Page

# Written into the server's user folder before it starts: no auto-opening dialogs, no minimap over the
# graph, short tooltip delay (the tests hover every input). These are ordinary user settings.
USER_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.InstalledVersion": "1.32.9",
    "Comfy.Minimap.Visible": False,
    "LiteGraph.Node.TooltipDelay": 100,
    "Comfy.EnableTooltips": True,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # draw titles and widgets at any zoom (readable screenshots)
}
# Browser-side flags the frontend keeps in localStorage (the "Nodes 2.0" banner over the canvas).
LOCAL_STORAGE = {"vueNodesBannerDismissed": "true"}
APP_READY = ("!!(window.app && window.app.graph && window.app.canvas && window.app.extensionManager"
             " && window.LiteGraph && document.querySelector('.templates-tab-button'))")
DIALOG = ".p-dialog"


def write_user_settings(user_dir: Path) -> None:
    path = user_dir / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = json.loads(path.read_text()) if path.is_file() else {}
    settings.update(USER_SETTINGS)
    path.write_text(json.dumps(settings, indent=1))


class ComfyUI:
    """One browser page showing the ComfyUI served at `url`."""

    def __init__(self, page: Page, url: str, timeout: float = 60.0):
        self.page, self.url, self.timeout = page, url, timeout

    # --- page ---------------------------------------------------------------------------------------
    def open(self) -> ComfyUI:
        self.page.navigate(self.url, timeout=self.timeout)
        self.page.evaluate("(() => { const s = %s; for (const k in s) localStorage.setItem(k, s[k]); })()"
                          % json.dumps(LOCAL_STORAGE))
        self.page.navigate(self.url, timeout=self.timeout)
        self.page.wait_for(APP_READY, timeout=self.timeout, what="ComfyUI frontend ready")
        self.page.wait_for("LiteGraph.registered_node_types['KSampler'] !== undefined", timeout=self.timeout,
                           what="node definitions registered")
        time.sleep(0.5)  # let the first workflow settle
        return self

    def mark(self) -> dict:
        """A position in the page's event records; `problems(mark)` reports what came after it."""
        p = self.page
        return {"console": len(p.console), "exceptions": len(p.exceptions), "dialogs": len(p.dialogs),
                "log": len(p.log_entries)}

    def problems(self, mark: dict, ignore: tuple[str, ...] = ()) -> list[str]:
        """Console errors, uncaught exceptions, JS dialogs and failed requests since `mark`, plus any
        open dialog or error toast in the page (the missing-nodes dialog is one)."""
        p = self.page
        found = [f"console.{c['type']}: {c['text']}" for c in p.console[mark["console"]:] if c["type"] in ("error", "assert")]
        found += [f"exception: {e}" for e in p.exceptions[mark["exceptions"]:]]
        found += [f"alert: {d}" for d in p.dialogs[mark["dialogs"]:]]
        found += [f"browser log {e['level']}: {e['text']} {e.get('url') or ''}" for e in p.log_entries[mark["log"]:]
                  if e["level"] == "error" and not self._expected_request_failure(e.get("url") or "")]
        found += [f"dialog: {t}" for t in self.open_dialogs()]
        found += [f"toast: {t}" for t in self.page.evaluate(
            "[...document.querySelectorAll('.p-toast-message-error, .p-toast-message-warn')].map(e => e.innerText)")]
        return [f for f in found if not any(i in f for i in ignore)]

    def _expected_request_failure(self, url: str) -> bool:
        """Failed requests that are no error of the pack: the frontend's look-ups on the internet
        (api.comfy.org node registry; these machines have no network), and previews of the example
        workflows' input images (LoadImage names a file the user provides, e.g. bottle_good.png)."""
        if url and not url.startswith(self.url):
            return True
        return url.startswith(self.url + "/api/view?") and "type=input" in url

    def open_dialogs(self) -> list[str]:
        return self.page.evaluate(
            "[...document.querySelectorAll(%s)].filter(d => d.getBoundingClientRect().width > 0)"
            ".map(d => d.innerText.trim().slice(0, 600))" % json.dumps(DIALOG))

    def close_dialogs(self):
        for _ in range(3):
            if not self.open_dialogs():
                return
            self.page.call("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape",
                           windowsVirtualKeyCode=27)
            self.page.call("Input.dispatchKeyEvent", type="keyUp", key="Escape", code="Escape",
                           windowsVirtualKeyCode=27)
            time.sleep(0.3)

    # --- template browser ---------------------------------------------------------------------------
    def open_template_browser(self):
        if not self.template_browser_open():
            self.page.click(".templates-tab-button")
        self.page.wait_for("(() => { const d = %s; return d && /Showing \\d+ of \\d+ templates/.test(d.innerText); })()"
                           % self._template_dialog_js(), timeout=self.timeout, what="template browser loaded")
        time.sleep(1.0)  # the dialog finishes loading its lists before it takes clicks

    def pick_template_category(self, pack: str):
        """Click the pack in the template browser's EXTENSIONS list until the browser shows its cards."""
        shown = ("(() => { const d = %s; return !!d && %s; })()" % (self._template_dialog_js(), self._heading_js(pack)))
        for _ in range(5):
            self.page.click_text(pack, within=".p-dialog nav")
            try:
                self.page.wait_for(shown, timeout=5.0, what=f"{pack} category")
                return
            except TimeoutError:
                continue
        raise TimeoutError(f"the template browser never showed the {pack} category")

    @staticmethod
    def _template_dialog_js():
        return ("[...document.querySelectorAll('.p-dialog')].find(d => d.getBoundingClientRect().width > 0"
                " && d.querySelector('nav') && /Templates/.test(d.innerText)) || null")

    @staticmethod
    def _heading_js(pack: str) -> str:
        """JS: the template browser's content area is headed by the category `pack` (d: the dialog)."""
        return ("[...d.querySelectorAll('*')].some(e => e.children.length === 0 && !e.closest('nav')"
                " && e.textContent.trim() === %s)" % json.dumps(pack))

    def template_browser_open(self) -> bool:
        return self.page.evaluate("(%s) !== null" % self._template_dialog_js())

    def template_names(self, pack: str) -> dict:
        """Open the template browser, pick the pack in its EXTENSIONS list; return the cards it shows
        ({"count": the "Showing N of M templates" count, "titles": card titles})."""
        self.open_template_browser()
        self.pick_template_category(pack)
        cards = ("(() => { const d = %s; if (!d) return null; const m = /Showing (\\d+) of (\\d+) templates/.exec(d.innerText);"
                 " const titles = [...d.querySelectorAll('h3')].filter(h => !h.closest('nav')).map(h => h.textContent.trim());"
                 " const heading = %s;"
                 " return heading && m && titles.length === +m[1] ? {count: +m[1], total: +m[2], titles} : null; })()"
                 % (self._template_dialog_js(), self._heading_js(pack)))
        self.page.wait_for(cards, timeout=self.timeout, what=f"{pack} templates")
        time.sleep(0.5)  # the list filters asynchronously: read the settled state
        return self.page.wait_for(cards, timeout=self.timeout, what=f"{pack} templates")

    def load_template(self, pack: str, name: str):
        """Open a pack's template from the template browser by clicking its card, as a user does."""
        self.open_template_browser()
        self.pick_template_category(pack)
        self.page.click_text(name, within=".p-dialog main, .p-dialog")
        self.page.wait_for(
            "(() => { const w = app.extensionManager.workflow.activeWorkflow;"
            " return w && w.filename === %s && !(%s); })()" % (json.dumps(name), self._template_dialog_js()),
            timeout=self.timeout, what=f"template {name} opened")
        time.sleep(1.0)  # widgets and links settle, canvas redraws

    # --- canvas -------------------------------------------------------------------------------------
    def graph_nodes(self) -> list[dict]:
        """Every node on the canvas: id, type, whether the frontend knows its type, widgets by name."""
        return self.page.evaluate("""app.graph.nodes.map(n => ({
            id: n.id, type: n.type, title: n.title,
            registered: LiteGraph.registered_node_types[n.type] !== undefined && !n.has_errors,
            widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value ?? null])),
            widget_order: (n.widgets || []).map(w => w.name),
            inputs: (n.inputs || []).map(i => ({name: i.name, type: i.type, link: i.link, widget: !!i.widget})),
        }))""")

    def fit_view(self):
        self.page.evaluate("app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        self.page.evaluate("app.canvas.setDirty(true, true)")
        time.sleep(0.8)

    def frame_graph(self, left: float = 110, top: float = 110, right: float = 40, bottom: float = 60) -> float:
        """Zoom and pan so the whole graph fills the canvas below the top bar (largest scale that fits,
        at most 1); returns the scale. The frontend's FitView leaves wide margins on wide graphs."""
        scale = self.page.evaluate("""(() => {
            const c = app.canvas.canvas.getBoundingClientRect(); const th = LiteGraph.NODE_TITLE_HEIGHT;
            let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
            for (const n of app.graph.nodes) {
                x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - th);
                x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
            }
            const s = Math.min(1, (c.width - %f - %f) / (x1 - x0), (c.height - %f - %f) / (y1 - y0));
            app.canvas.ds.scale = s;
            app.canvas.ds.offset = [%f / s - x0, %f / s - y0];
            app.canvas.setDirty(true, true);
            return s; })()""" % (left, right, top, bottom, left, top))
        time.sleep(0.8)
        return scale

    def new_blank_workflow(self):
        self.page.evaluate("app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
        self.page.wait_for("app.graph.nodes.length === 0", timeout=self.timeout, what="blank workflow")

    def add_node(self, node_type: str, pos=(200, 200)) -> int:
        """Add a fresh node at 100 % zoom and wait until the canvas has drawn it (widget positions known)."""
        node_id = self.page.evaluate(
            "(() => { const n = LiteGraph.createNode(%s); n.pos = %s; app.graph.add(n);"
            " app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1; app.canvas.setDirty(true, true);"
            " return n.id; })()" % (json.dumps(node_type), json.dumps(list(pos))))
        self.page.wait_for(
            "(() => { app.canvas.draw(true, true); const n = app.graph.getNodeById(%d);"
            " return (n.widgets || []).every(w => (w.y ?? w.last_y) > 0); })()" % node_id,
            timeout=10.0, what=f"{node_type} drawn")
        return node_id

    def hover_tooltip(self, node_id: int, name: str) -> str | None:
        """Move the mouse over a node's input socket or widget `name`; return the tooltip the canvas shows."""
        xy = self.page.evaluate("""(() => {
            const n = app.graph.getNodeById(%d); const name = %s;
            const rect = app.canvas.canvas.getBoundingClientRect();
            let gx, gy;
            const w = (n.widgets || []).find(w => w.name === name);
            if (w) { gx = n.pos[0] + n.size[0] * 0.35; gy = n.pos[1] + (w.y ?? w.last_y) + 10; }
            else { const i = n.inputs.findIndex(i => i.name === name); if (i < 0) return null;
                   const p = n.getConnectionPos(true, i); gx = p[0] + 12; gy = p[1]; }
            const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([gx, gy]);
            return {x: rect.left + cx, y: rect.top + cy}; })()""" % (node_id, json.dumps(name)))
        if xy is None:
            return None
        self.page.call("Input.dispatchMouseEvent", type="mouseMoved", x=5, y=self._canvas_bottom())
        time.sleep(0.15)
        self.page.call("Input.dispatchMouseEvent", type="mouseMoved", x=xy["x"], y=xy["y"])
        self.page.call("Input.dispatchMouseEvent", type="mouseMoved", x=xy["x"] + 1, y=xy["y"])
        try:
            return self.page.wait_for(
                "(() => { const t = document.querySelector('.node-tooltip');"
                " return t && t.getBoundingClientRect().width > 0 ? t.innerText.trim() : null; })()",
                timeout=3.0, interval=0.1, what=f"tooltip of {name}")
        except TimeoutError:
            return None

    def _canvas_bottom(self) -> float:
        return self.page.evaluate("app.canvas.canvas.getBoundingClientRect().bottom - 40")

    # --- node library -------------------------------------------------------------------------------
    def search_node_library(self, text: str) -> list[str]:
        """Open the node library sidebar, type `text` into its search box, return the listed node names."""
        box = "input[placeholder='Search Nodes...']"
        if not self.page.evaluate("!!document.querySelector(%s)" % json.dumps(box)):
            self.page.click(".node-library-tab-button")
        self.page.click(box)
        self.page.evaluate("(() => { const i = document.querySelector(%s); i.select(); })()" % json.dumps(box))
        self.page.type_text(text)
        listing = ("[...document.querySelectorAll('.side-bar-panel li.p-tree-node-leaf .node-label')]"
                   ".map(e => e.textContent.trim())")
        self.page.wait_for("%s.length > 0" % listing, timeout=self.timeout, what=f"node library results for {text}")
        time.sleep(1.0)  # the search is debounced: read the settled list
        return self.page.evaluate(listing)

    def close_sidebar(self):
        if self.page.evaluate("!!document.querySelector(\"input[placeholder='Search Nodes...']\")"):
            self.page.click(".node-library-tab-button")
            time.sleep(0.3)

    def screenshot(self, path):
        return self.page.screenshot(path)


@contextmanager
def browser_session(server, work_dir: Path, width: int = 1600, height: int = 1000):
    """Chromium + ComfyUI page on a running server; the browser is always stopped on exit."""
    browser = Chromium.launch(work_dir / "chromium-profile", work_dir / "chromium.log", width, height)
    try:
        yield ComfyUI(browser.page, server.url).open()
    finally:
        browser.close()
