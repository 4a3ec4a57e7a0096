"""The category list of an export: defect type names with stable ids.

An export keeps its list (in ``export.json``) and only ever appends to it: defect types it has not seen get
the next ids in the order of their names, and no id is ever renumbered, so datasets generated one defect
type at a time and exported into the same folder form one training set. COCO uses the ids as they are
(from 1); YOLO's class index is the id minus 1.
"""
from __future__ import annotations


def extend(categories: list, names) -> list:
    """``categories`` ([{"id", "name"}]) with every name of ``names`` it lacks appended, sorted by name."""
    known = {c["name"] for c in categories}
    next_id = max((c["id"] for c in categories), default=0) + 1
    added = [{"id": next_id + i, "name": name} for i, name in enumerate(sorted(set(names) - known))]
    return list(categories) + added


def ids_by_name(categories: list) -> dict:
    return {c["name"]: c["id"] for c in categories}
