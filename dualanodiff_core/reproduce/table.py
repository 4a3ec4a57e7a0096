"""The reproduction's result in the paper's layout: one row per category and the mean over categories,
our DualAnoDiff numbers beside the paper's, then the baselines trained and scored the same way."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import DualAnoDiffError
from ..evaluation.metrics import METRICS
from ..evaluation.report import LABELS
from ..io_utils import atomic_write

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.json"
PAPER_COLUMNS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "image_auroc", "image_ap", "image_f1_max")
OURS = "DualAnoDiff"


def read_paper_numbers(path: Path | None = None) -> dict:
    path = Path(path or PAPER_NUMBERS)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DualAnoDiffError(f"--paper-numbers {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data.get("mean", {}), dict) or not isinstance(data.get("categories", {}), dict):
        raise DualAnoDiffError(f"--paper-numbers {path}: expected {{\"mean\": {{metric: value}}, \"categories\": "
                               "{category: {metric: value}}}, values as fractions (0.991)")
    return data


def collect(evaluations: dict) -> dict:
    """{category: metrics.json summary} -> {set: {category: {metric: mean}}} plus the protocol seen."""
    table, protocol = {}, {}
    for category, summary in evaluations.items():
        protocol[category] = summary["protocol"]["selection"]
        for name, s in summary["sets"].items():
            table.setdefault(name, {})[category] = s["mean"]
    return {"sets": table, "selection": protocol}


def _mean_over(rows: dict, metric: str):
    values = [r.get(metric) for r in rows.values()]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def render(collected: dict, paper: dict, categories: list, choices: dict) -> str:
    ours = collected["sets"].get(OURS, {})
    head = ["category"] + [f"{LABELS[m]} ours / paper" for m in PAPER_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for c in categories + ["mean"]:
        row = ours.get(c, {}) if c != "mean" else {m: _mean_over(ours, m) for m in METRICS}
        theirs = paper.get("categories", {}).get(c, {}) if c != "mean" else paper.get("mean", {})
        cells = [f"{_pct(row.get(m))} / {_pct(theirs.get(m))}" for m in PAPER_COLUMNS]
        lines.append(f"| {'**mean**' if c == 'mean' else c} | " + " | ".join(cells) + " |")
    others = [n for n in collected["sets"] if n != OURS]
    base = ["", "Every set, pixel AP / AU-PRO / image AUROC in % (same detector, same test images):", "",
            "| category | " + " | ".join([OURS, *others]) + " |", "|---" * (len(others) + 2) + "|"]
    for c in categories + ["mean"]:
        cells = []
        for name in [OURS, *others]:
            rows = collected["sets"].get(name, {})
            row = rows.get(c, {}) if c != "mean" else {m: _mean_over(rows, m) for m in METRICS}
            cells.append(" / ".join(_pct(row.get(m)) for m in ("pixel_ap", "au_pro", "image_auroc")))
        base.append(f"| {'**mean**' if c == 'mean' else c} | " + " | ".join(cells) + " |")
    optimistic = sorted(c for c, sel in collected["selection"].items() if sel == "test")
    notes = ["", "Protocol: " + "; ".join(f"{k}: {v}" for k, v in choices.items()) + ".",
             f"Paper numbers: {paper.get('source', 'as given')}"]
    if optimistic:
        notes.append("Detector checkpoints chosen **on the test set** (as the paper): these numbers are optimistic.")
    return "\n".join(lines + base + notes) + "\n"


def write_table(cfg, categories: list, choices: dict, paper_path: Path | None = None) -> Path:
    from .plan import evaluation_dir

    evaluations = {}
    for c in categories:
        path = evaluation_dir(cfg, c) / "metrics.json"
        if path.is_file():
            evaluations[c] = json.loads(path.read_text(encoding="utf-8"))
    collected = collect(evaluations)
    text = render(collected, read_paper_numbers(paper_path), categories, choices)
    out = Path(cfg.output_dir)
    atomic_write(out / "table.json", lambda tmp: Path(tmp).write_text(
        json.dumps({**collected, "choices": choices}, indent=1), encoding="utf-8"), overwrite=True)
    return atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)
