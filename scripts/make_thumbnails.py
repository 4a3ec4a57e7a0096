#!/usr/bin/env python3
"""Make the example workflows' thumbnails and the README's screenshots from real screenshots.

Starts the real ComfyUI server (the v0.3.75 copy fetched by scripts/fetch_comfyui.py, with this pack
installed as a custom node, on CPU, on 127.0.0.1) and headless Debian Chromium, opens each
`example_workflows/*.json` from ComfyUI's template browser exactly as the browser tests do
(tests/browser/), fits it to the window, and writes

    docs/images/<name>.png          the ComfyUI window down to the graph's end (README walkthrough)
    docs/images/template_browser.png  the template browser showing the pack's workflows
    example_workflows/<name>.jpg    the graph cut out, 3:2, 512 px wide (the template card)

It refuses to write anything if a workflow opens with a missing-node or other frontend error.
Needs chromium (`apt-get install -y chromium`) and the test requirements (`bash scripts/install.sh --test`).

    .venv/bin/python scripts/make_thumbnails.py [--only NAME ...] [--keep-dir DIR]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))

from comfy_server import PACK_NAME, ComfyServer
from comfy_ui import browser_session, write_user_settings
from pack_info import UI_DIR, WORKFLOWS
from thumbnails import WINDOW, graph_box, thumbnail, window_down_to

DOCS_DIR = REPO / "docs" / "images"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=None, help="workflow names (default: all)")
    ap.add_argument("--keep-dir", type=Path, default=None,
                    help="keep the server log and raw screenshots here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    names = args.only or WORKFLOWS
    work = Path(tempfile.mkdtemp(prefix="dualanodiff-thumbs-"))
    server = ComfyServer(work / "server")
    try:
        server.prepare()
        write_user_settings(server.dir("user"))
        server.start()
        with browser_session(server, work, *WINDOW) as ui:
            for name in names:
                ui.close_dialogs()
                mark = ui.mark()
                ui.load_template(PACK_NAME, name)
                ui.frame_graph()
                problems = ui.problems(mark)
                if problems:
                    print(f"{name}: the frontend reported problems, nothing written:\n  " + "\n  ".join(problems))
                    return 1
                raw = ui.screenshot(work / f"{name}.png")
                box = graph_box(ui)
                DOCS_DIR.mkdir(parents=True, exist_ok=True)
                window_down_to(raw, box["y1"] + 40, DOCS_DIR / f"{name}.png")
                thumbnail(raw, box, UI_DIR / f"{name}.jpg")
                print(f"wrote docs/images/{name}.png and example_workflows/{name}.jpg")
            # the template browser with the new thumbnails (the server serves the installed copy's files)
            installed = server.dir("custom_nodes") / PACK_NAME / "example_workflows"
            for name in names:
                shutil.copyfile(UI_DIR / f"{name}.jpg", installed / f"{name}.jpg")
            ui.page.call("Network.enable")
            ui.page.call("Network.setCacheDisabled", cacheDisabled=True)
            ui.close_dialogs()
            ui.open()
            ui.template_names(PACK_NAME)
            time.sleep(1.5)  # thumbnails load
            shot = ui.screenshot(work / "template_browser.png")
            window_down_to(shot, ui.page.evaluate(
                "document.querySelector('.p-dialog').getBoundingClientRect().bottom + 20"), DOCS_DIR / "template_browser.png")
            print("wrote docs/images/template_browser.png")
        return 0
    finally:
        server.stop()
        if args.keep_dir:
            shutil.copytree(work, args.keep_dir, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("comfyui", "base", "chromium-profile"))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
