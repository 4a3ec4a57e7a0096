"""Thumbnails and README screenshots cut from real screenshots of ComfyUI's canvas (shared by the
browser tests and scripts/make_thumbnails.py, so the test can check that the shipped thumbnails are
what the current workflows look like)."""
from __future__ import annotations

import io
from pathlib import Path

THUMB_WIDTH = 512
THUMB_ASPECT = 3 / 2  # about the template browser's card image (width / height)
WINDOW = (1920, 1080)


def graph_box(ui) -> dict:
    """The graph's bounding box in window pixels (node bodies and title bars)."""
    return ui.page.evaluate("""(() => {
        const r = app.canvas.canvas.getBoundingClientRect(); const th = LiteGraph.NODE_TITLE_HEIGHT;
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        for (const n of app.graph.nodes) {
            const [ax, ay] = app.canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - th]);
            const [bx, by] = app.canvas.ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
            x0 = Math.min(x0, ax); y0 = Math.min(y0, ay); x1 = Math.max(x1, bx); y1 = Math.max(y1, by);
        }
        return {x0: r.left + x0, y0: r.top + y0, x1: r.left + x1, y1: r.top + y1};
    })()""")


def thumbnail(png: Path, box: dict, out: Path) -> None:
    """The graph cut tightly out of the screenshot, centred on the canvas colour at the card's aspect,
    scaled to THUMB_WIDTH."""
    from PIL import Image

    with Image.open(png) as shot:
        shot = shot.convert("RGB")
        pad = 12
        x0, y0 = max(0, round(box["x0"]) - pad), max(0, round(box["y0"]) - pad)
        x1, y1 = min(shot.width, round(box["x1"]) + pad), min(shot.height, round(box["y1"]) + pad)
        graph = shot.crop((x0, y0, x1, y1))
        canvas_colour = shot.getpixel((min(shot.width - 1, x1 + 4), min(shot.height - 1, y1 + 4)))
    w, h = graph.size
    frame = (max(w, round(h * THUMB_ASPECT)), max(h, round(w / THUMB_ASPECT)))
    card = Image.new("RGB", frame, canvas_colour)
    card.paste(graph, ((frame[0] - w) // 2, (frame[1] - h) // 2))
    card = card.resize((THUMB_WIDTH, round(THUMB_WIDTH * frame[1] / frame[0])), Image.LANCZOS)
    buf = io.BytesIO()
    card.save(buf, "JPEG", quality=90, optimize=True)
    out.write_bytes(buf.getvalue())


def window_down_to(png: Path, bottom: float, out: Path) -> None:
    """The ComfyUI window from its top bar down to just below the graph (no empty canvas below)."""
    from PIL import Image

    with Image.open(png) as shot:
        shot.crop((0, 0, shot.width, min(shot.height, round(bottom)))).save(out, optimize=True)
