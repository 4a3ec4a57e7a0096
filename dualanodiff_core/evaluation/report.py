"""metrics.json (everything, per seed, per defect type) and report.md (one table: set x metric)."""
from __future__ import annotations

import json
from pathlib import Path

from ..io_utils import atomic_write
from .metrics import METRICS
from .split import GOOD

LABELS = {"pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "pixel_f1_max": "pixel F1-max", "au_pro": "AU-PRO",
          "image_auroc": "image AUROC", "image_ap": "image AP", "image_f1_max": "image F1-max"}
GENERATION_LABELS = {"is": "IS", "ic_lpips": "IC-LPIPS"}
# The paper's downstream localization on MVTec AD (mean over its 15 categories), checkpoint chosen on
# the test set. Only the numbers quoted in the project's issue are filled in.
PAPER = {"label": "DualAnoDiff paper: MVTec AD, mean of 15 categories, selected on test",
         "metrics": {"pixel_auroc": 0.991, "pixel_ap": 0.845}}


def _mean_std(values):
    from .run import mean_std

    return mean_std(values)


def _aggregate(runs: dict, pick) -> tuple:
    means, stds = {}, {}
    for m in METRICS:
        means[m], stds[m] = _mean_std([pick(run).get(m) for run in runs.values()])
    return means, stds


def _classification(runs: dict) -> dict | None:
    """Mean and spread of the classification accuracy over seeds, overall and per defect type."""
    scored = [r["classification"] for r in runs.values() if "classification" in r]
    if not scored:
        return None
    mean, std = _mean_std([c["accuracy"] for c in scored])
    per = {d: dict(zip(("mean", "std"), _mean_std([c["per_defect"].get(d) for c in scored])))
           for d in sorted({d for c in scored for d in c["per_defect"]})}
    return {"mean": mean, "std": std, "per_defect": per}


def build_summary(data, sets: list, cfg, seeds: list, results: dict, val_fraction: float, generation: dict,
                  maps_dir: str | None, classifier: dict | None = None) -> dict:
    per_defect = {}
    for d in data.test.defects:
        per_defect[d] = per_defect.get(d, 0) + 1
    summary_sets = {}
    for ts in sets:
        runs = results[ts.name]["runs"]
        mean, std = _aggregate(runs, lambda r: r["category"])
        defects = sorted({d for r in runs.values() for d in r["defects"]})
        by_defect = {d: dict(zip(("mean", "std"), _aggregate(runs, lambda r, d=d: r["defects"].get(d, {}))))
                     for d in defects}
        summary_sets[ts.name] = {"kind": ts.kind, "description": ts.description, "notes": ts.notes, "mean": mean,
                                 "std": std, "defects": by_defect, "seeds": runs,
                                 "curves": results[ts.name].get("curves"),
                                 "generation": generation.get(ts.name), "classification": _classification(runs)}
    return {
        "category": data.category,
        "defect_types": list(data.defects),
        "test_set": {"images": len(data.test), "normal": per_defect.get(GOOD, 0),
                     "defective": len(data.test) - per_defect.get(GOOD, 0),
                     "per_defect": {d: n for d, n in sorted(per_defect.items()) if d != GOOD}},
        "few_shot_real_defects": len(data.shots),
        "normal_training_images": int(data.normals.shape[0]),
        "protocol": {"detector": cfg.settings(), "seeds": list(seeds), "selection": cfg.select,
                     "optimistic": cfg.select == "test",
                     "validation_fraction": val_fraction if cfg.select == "validation" else None,
                     "image_score": "max of the 21x21 mean-pooled map", "pro_limit": cfg.pro_limit,
                     "classifier": classifier},
        "sets": summary_sets,
        "paper": PAPER,
        "notes": list(data.notes),
        "files": {"metrics": "metrics.json", "report": "report.md", "maps": maps_dir},
    }


def _cell(mean, std) -> str:
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.1f}"
    return text + (f" ± {100 * std:.1f}" if std is not None else "")


def _generation_cell(value) -> str:
    if not value:
        return "n/a"
    mean, std = value.get("mean"), value.get("std")
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std else "")


def user_rows(summary: dict) -> list:
    """The sets of the user's question, in its order: real-only, then the real shots mixed with each
    generated set, each placed set, crop-and-paste ([] without mixed sets)."""
    sets = summary["sets"]
    mixed = [n for n, s in sets.items() if s["kind"] == "mixed"]
    if not mixed:
        return []
    order = {"synthetic": 0, "placed": 1, "crop-paste": 2}
    mixed.sort(key=lambda n: order.get(sets[n]["description"].get("mixed_kind"), 0))
    return [n for n in sets if sets[n]["kind"] == "real-only"] + mixed


def user_table(summary: dict) -> str:
    """The user's question as a table: does adding generated data to the few real shots help?"""
    rows = user_rows(summary)
    keys = ("pixel_ap", "pixel_auroc", "au_pro", "image_auroc", "image_ap")
    lines = ["| training data | " + " | ".join(LABELS[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in rows:
        s = summary["sets"][name]
        lines.append(f"| {_user_label(name, s)} | " + " | ".join(_cell(s["mean"][k], s["std"][k]) for k in keys) + " |")
    return "\n".join(lines)


def _user_label(name: str, s: dict) -> str:
    if s["kind"] == "real-only":
        return f"{s['description'].get('shots')} real shots alone"
    d = s["description"]
    what = {"placed": "placed set", "crop-paste": "crop-and-paste of them"}.get(d.get("mixed_kind"), "generated set")
    other = "" if d.get("mixed_kind") == "crop-paste" else f" {d.get('mixed_with')}"
    return f"real shots + {what}{other} ({100 * d['real_share']:.0f} % real)"


def table(summary: dict) -> str:
    """The report's main table (markdown): one row per set, the paper's row last."""
    gen = any(s.get("generation") for s in summary["sets"].values())
    cols = [LABELS[m] for m in METRICS] + ([GENERATION_LABELS[g] for g in GENERATION_LABELS] if gen else [])
    lines = ["| set | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, s in summary["sets"].items():
        cells = [_cell(s["mean"][m], s["std"][m]) for m in METRICS]
        if gen:
            cells += [_generation_cell((s.get("generation") or {}).get(g)) for g in GENERATION_LABELS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    paper = summary["paper"]
    cells = [f"{100 * paper['metrics'][m]:.1f}" if m in paper["metrics"] else "—" for m in METRICS]
    cells += ["—"] * (len(GENERATION_LABELS) if gen else 0)
    lines.append(f"| *{paper['label']}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def classification_table(summary: dict) -> str:
    """Defect-type classification accuracy per set (overall and per type); empty when not scored."""
    scored = {n: s["classification"] for n, s in summary["sets"].items() if s.get("classification")}
    if not scored:
        return ""
    types = sorted({d for c in scored.values() for d in c["per_defect"]})
    lines = ["| set | accuracy | " + " | ".join(types) + " |", "|---" * (len(types) + 2) + "|"]
    for name, c in scored.items():
        lines.append(f"| {name} | {_cell(c['mean'], c['std'])} | "
                     + " | ".join(_cell(c["per_defect"][d]["mean"], c["per_defect"][d]["std"]) if d in c["per_defect"]
                                  else "n/a" for d in types) + " |")
    return "\n".join(lines)


def _defect_table(summary: dict) -> str:
    keys = ("pixel_auroc", "pixel_ap", "au_pro", "image_auroc")
    lines = ["| set | defect type | " + " | ".join(LABELS[k] for k in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, s in summary["sets"].items():
        for defect, agg in s["defects"].items():
            lines.append(f"| {name} | {defect} | " + " | ".join(_cell(agg["mean"][k], agg["std"][k]) for k in keys) + " |")
    return "\n".join(lines)


def _describe_set(name: str, s: dict) -> str:
    d = s["description"]
    if s["kind"] in ("synthetic", "placed"):
        what = "defects placed on real normal images" if s["kind"] == "placed" else "synthetic set"
        return (f"- **{name}**: {what} {d.get('root')} ({d.get('used_pairs')} pairs used"
                + (f", {d['empty_masks_dropped']} with empty masks dropped" if d.get("empty_masks_dropped") else "")
                + ")")
    if s["kind"] == "mixed":
        return (f"- **{name}**: {d.get('mixed_with')} with the few real shots kept in every batch: "
                f"{100 * d['real_share']:.0f} % of the defective samples are the real shots (augmented as in "
                f"real-only), the rest from {d.get('mixed_with')}")
    if s["kind"] == "real-only":
        return f"- **{name}**: the {d.get('shots')} few-shot real pairs alone, augmented (flips, brightness/contrast)"
    return (f"- **{name}**: the {d.get('shots')} few-shot real defects cut by their masks and pasted onto normal "
            "images at random positions inside the object, scales 0.75-1.25 and rotations")


def render(summary: dict) -> str:
    p, t = summary["protocol"], summary["test_set"]
    det = p["detector"]
    if p["selection"] == "test":
        selection = ("**on the test set, as the paper does: these numbers are optimistic** (the checkpoint is chosen "
                     "by the very images it is scored on)")
    elif p["selection"] == "validation":
        selection = (f"on a validation split of the training data ({100 * p['validation_fraction']:.0f} % of the normal "
                     f"training images, held out, plus the {summary['few_shot_real_defects']} few-shot real defects), "
                     "never on the test set")
    else:
        selection = "none: the last training step is kept"
    seeds = p["seeds"]
    lines = [
        f"# Does the generated data help a detector? {summary['category']}",
        "",
        f"Test set: {t['images']} images, {t['defective']} defective "
        f"({', '.join(f'{d}: {n}' for d, n in t['per_defect'].items())}) and {t['normal']} normal; none of them is one of "
        f"the {summary['few_shot_real_defects']} few-shot real defects. Detector: DRAEM-style discriminative U-Net "
        f"(base width {det['base_width']}, {det['resolution']} px), focal loss, Adam lr {det['lr']:g}, "
        f"{det['epochs']} epochs x {det['samples_per_epoch']} samples (batch {det['batch_size']}), half normal "
        f"images, half the set's defects. Checkpoint selection: {selection}. "
        f"Seeds: {', '.join(map(str, seeds))}" + (" (mean ± sample standard deviation)." if len(seeds) > 1 else "."),
        "",
        "Metrics in %, on the whole category (image score: the maximum of the 21x21 mean-pooled map; AU-PRO "
        f"integrated to FPR {p['pro_limit']:g}).",
        "",
        *([f"## Do the generated pairs help your {summary['few_shot_real_defects']} real defects?", "",
           "Each row trains the same detector on the few real shots, alone or with a set added (the shots kept "
           "in every batch at the share shown).", "", user_table(summary), "", "## Each set alone", ""]
          if user_rows(summary) else []),
        table(summary),
        "",
        "The paper's row is for reference only: another dataset size, its own generated data, selection on the "
        "test set.",
        "",
        "## Sets",
        "",
        *[_describe_set(n, s) for n, s in summary["sets"].items()],
        "",
        "## Per defect type (that type's test images and all normal ones)",
        "",
        _defect_table(summary),
    ]
    if classification_table(summary):
        c = p["classifier"]
        start = ("fine-tuned from the ImageNet weights in " + c["weights"]) if c["pretrained"] else \
            "trained from scratch (no --classifier-weights given)"
        lines += ["", "## Defect-type classification (accuracy in % on the real test defects)", "",
                  f"A ResNet-34 per set and seed, {start}, {c['steps']} steps of {c['batch_size']} of the set's "
                  "defective images labelled with their type; scored on every real defective test image.", "",
                  classification_table(summary)]
    notes = list(summary["notes"]) + [f"{n}: {note}" for n, s in summary["sets"].items() for note in s["notes"]]
    if p["selection"] == "validation" and any(s["kind"] not in ("synthetic", "placed") for s in summary["sets"].values()):
        notes.append("the baselines are built from the same few real shots that checkpoint selection scores on, so their "
                     "selection has seen its defects (which, if anything, favours them)")
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines += ["", "Everything above, per seed and per defect type, is in metrics.json; curves.png holds the ROC and "
              "PR curves, predictions.png test images with each set's predicted map."]
    if summary["files"].get("maps"):
        lines.append(f"Every predicted map is in {summary['files']['maps']} (16-bit PNG, listed in maps.jsonl).")
    return "\n".join(lines) + "\n"


def write_report(summary: dict, path: Path) -> Path:
    text = render(summary)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)


def write_json(summary: dict, path: Path) -> Path:
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1), encoding="utf-8"),
                        overwrite=True)
