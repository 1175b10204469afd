"""What a researcher checks before training: counts per split and class, groups, duplicates, skips."""
from __future__ import annotations

import numpy as np

from medmtl.data.pipeline import PreparedData

SPLIT_ORDER = ("train", "val", "test")


def task_summary(data: PreparedData, task: str) -> dict:
    spec = data.tasks[task]
    src = data.source_of(task)
    labelled = data.has_label(task)
    lab = data.labels[task]
    splits: dict[str, dict[str, int]] = {}
    for split in [s for s in SPLIT_ORDER if s in set(src.split)] + sorted(set(src.split) - set(SPLIT_ORDER)):
        rows = labelled & (src.split == split)
        if spec.kind in ("segmentation", "detection"):
            splits[split] = {"images": int(rows.sum())}
        elif spec.kind == "multilabel":
            splits[split] = {c: int(np.nansum(lab[rows, k])) for k, c in enumerate(spec.classes)}
        else:
            counts = np.bincount(lab[rows], minlength=spec.num_classes)
            splits[split] = {c: int(counts[k]) for k, c in enumerate(spec.classes)}
    out = {
        "kind": spec.kind,
        "role": spec.role,
        "images": int(labelled.sum()),
        "splits": splits,
        "groups": int(len(set(src.groups[labelled]))),
        "duplicate_groups": src.exact_duplicate_groups,
        "near_duplicate_groups": src.near_duplicate_groups,
        "cross_split_duplicates": src.cross_split_duplicates,
        "skipped": [s.as_dict() for s in src.skipped],
        "notes": list(src.notes),
    }
    if data.leakage:  # the cross-dataset guard ran: {} means no copies in any other dataset
        out["cross_duplicates"] = dict(data.leakage.get("cross_duplicates", {}).get(task, {}))
        out["excluded_from_training"] = dict(data.leakage.get("excluded", {}).get(task, {}))
        removed = data.excluded.get(task, np.zeros(len(src), bool)) & labelled & (src.split == "train")
        out["removed_from_training"] = int(removed.sum())  # once per image, whichever datasets it copies
        out["excluded_from_validation"] = dict(data.leakage.get("excluded_from_validation", {}).get(task, {}))
        held = data.excluded_val.get(task, np.zeros(len(src), bool)) & labelled & (src.split == "val")
        out["removed_from_validation"] = int(held.sum())
    return out


def inspect(data: PreparedData) -> dict:
    """The ``medmtl data inspect --json`` document."""
    return {"tasks": {name: task_summary(data, name) for name in data.tasks}}


def format_text(report: dict) -> str:
    lines = []
    for name, t in report["tasks"].items():
        lines.append(f"{name} ({t['kind']}, {t['role']}): {t['images']} images, {t['groups']} groups, "
                     f"{t['duplicate_groups']} exact / {t['near_duplicate_groups']} near duplicate groups")
        for split, counts in t["splits"].items():
            lines.append(f"  {split:<6}" + "  ".join(f"{c}={n}" for c, n in counts.items()))
        if t["cross_split_duplicates"]:
            lines.append(f"  ! {t['cross_split_duplicates']} images share a duplicate group across official splits")
        for other, n in t.get("cross_duplicates", {}).items():
            lines.append(f"  copies in {other}: {n}")
        for other, n in t.get("excluded_from_training", {}).items():
            lines.append(f"  removed from training as copies of {other} evaluation images: {n}")
        if t.get("removed_from_training"):
            lines.append(f"  leakage guard: {t['removed_from_training']} training images removed in all")
        lines.extend(f"  note: {n}" for n in t.get("notes", []))
        if t["skipped"]:
            lines.append(f"  skipped {len(t['skipped'])} file(s):")
            lines.extend(f"    {s['path']}: {s['reason']}" for s in t["skipped"])
    return "\n".join(lines)


def data_summary(data) -> dict:
    """Per task: images per split and class, duplicates, and what the leakage guard found and
    removed (:func:`task_summary`, skipped files counted: they are listed in the run log)."""
    out = {}
    for task in data.tasks:
        info = task_summary(data, task)
        info["skipped"] = len(info["skipped"])
        out[task] = info
    return out
