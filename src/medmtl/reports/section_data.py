"""The data each task trained and was tested on, and what the cross-dataset leakage guard removed
(``results/data.json``, written by the experiment runner)."""
from __future__ import annotations

import json

from medmtl.reports._sections import REPORT_SECTIONS, Section


@REPORT_SECTIONS.register("data", order=10)
def data_section(inputs) -> Section | None:
    path = inputs.run_dir / "results" / "data.json"
    if not path.is_file():
        return None
    tasks = json.loads(path.read_text())
    rows, removed_any = [], False
    per_fold = [(f"{name}, fold {k + 1}", fold) for name, t in tasks.items() for k, fold in enumerate(t["folds"])
                ] if any("folds" in t for t in tasks.values()) else list(tasks.items())
    for name, t in per_fold:
        counts = {s: sum(c.values()) for s, c in (t.get("splits") or {}).items()}
        copies = t.get("cross_duplicates") or {}
        excluded = t.get("excluded_from_training") or {}
        removed_any |= bool(t.get("removed_from_training"))
        removed = int(t.get("removed_from_training") or 0)
        held = int(t.get("removed_from_validation") or 0)
        removed_any |= bool(held)
        rows.append({"task": name, "kind": t.get("kind"), "train": counts.get("train", 0) - removed,
                     "val": counts.get("val", 0) - held,
                     "test": counts.get("test", 0), "groups": t.get("groups"),
                     "copies in other tasks": ", ".join(f"{o}: {n}" for o, n in copies.items()) or "none",
                     "removed from training (copies of evaluation images)":
                         ", ".join(f"{o}: {n}" for o, n in excluded.items()) or "none",
                     "removed from validation (copies of test images)":
                         ", ".join(f"{o}: {n}" for o, n in (t.get("excluded_from_validation") or {}).items())
                         or "none",
                     "skipped files": t.get("skipped", 0)})
    guard = any("cross_duplicates" in t for t in tasks.values())
    text = ["Images per split (labelled for the task) after de-duplication; 'train' counts what training "
            "may use, after the leakage guard removed copies of evaluation images."]
    if len(per_fold) > len(tasks):
        text.append("Cross-validation: one row per task and fold of the representative split; every image of "
                    "the main task is tested in exactly one fold.")
    limits = ((inputs.config or {}).get("data") or {})
    subset = [f"{what} limited to {limits[key]} images per task (a seeded subset)"
              for key, what in (("limit_train", "training"), ("limit_eval", "validation (model selection and "
                                "scoring)"), ("limit_test", "test scoring, the same images for every arm and seed"))
              if limits.get(key)]
    if subset:
        text.append("This run used subsets (a quick run): " + "; ".join(subset) + "."
                    + (" Test metrics are therefore estimated on fewer cases than the table lists, with "
                       "wider CIs." if limits.get("limit_test") else ""))
    if not guard:
        text.append("The cross-dataset leakage guard did not run (one dataset, or leakage: off).")
    elif removed_any:
        text.append("Leakage guard: images that are copies of another task's validation or test images were "
                    "removed from training, and validation images that are copies of another task's test images "
                    "from validation (they would select the model tested on their original); the counts are per "
                    "task pair.")
    else:
        text.append("Leakage guard: no training image of one task is a copy of another task's validation or "
                    "test image (copies that exist sit in the same split as their original).")
    return Section("Data and cross-dataset leakage guard", text=text, table=rows, data=tasks)
