"""What test-time augmentation did, measured where a decision may look: each model's validation
scores with TTA (the ``val`` rows, scored as test is) against the same model without it
(``val_no_tta``). TTA is a fixed choice of the config, not tuned; this says when it hurts."""
from __future__ import annotations

import math

from medmtl.evaluation.results import NO_TTA_SPLIT
from medmtl.reports._sections import REPORT_SECTIONS, Section

METRICS = ("auc", "accuracy", "balanced_accuracy")
# a drop of the validation AUC by more than this is called hurting (below it: noise of a few images)
HURTS = 0.005
# a change of the mean positive-class score by more than this moves every 0.5-threshold call with it
SHIFT = 0.05


def tta_rows(metrics: dict, inputs=None) -> list[dict]:
    """One row per (arm, seed, task) whose validation was scored with and without TTA; with the report's
    ``inputs``, binary tasks also get the mean positive-class score with and without (a shift)."""
    rows = []
    for arm, seeds in (metrics or {}).items():
        for seed, tasks in seeds.items():
            for task, splits in tasks.items():
                if NO_TTA_SPLIT not in splits or "val" not in splits:
                    continue
                row = {"arm": arm, "seed": seed, "task": task}
                for m in METRICS:
                    on, off = splits["val"].get(m), splits[NO_TTA_SPLIT].get(m)
                    if on is not None and off is not None:
                        row[f"val {m} without"], row[f"val {m} with TTA"] = float(off), float(on)
                on, off = row.get("val auc with TTA", math.nan), row.get("val auc without", math.nan)
                row["hurts"] = bool(math.isfinite(on) and math.isfinite(off) and on < off - HURTS)
                info = inputs.tasks.get(task) if inputs is not None else None
                if info is not None and len(info.classes) == 2:
                    means = [inputs.task_predictions(arm, int(seed), task, s) for s in ("val", NO_TTA_SPLIT)]
                    if all(m is not None for m in means):
                        col = f"score_{info.classes[1]}"
                        row["val mean score without"], row["val mean score with TTA"] = (
                            float(means[1][col].mean()), float(means[0][col].mean()))
                        row["shifts scores"] = bool(abs(row["val mean score with TTA"] - row["val mean score without"])
                                                    > SHIFT)
                rows.append(row)
    return rows


@REPORT_SECTIONS.register("tta", order=27)
def tta_section(inputs) -> Section | None:
    rows = tta_rows(inputs.metrics, inputs)
    if not rows:
        return None
    hurt = [r for r in rows if r["hurts"]]
    text = ["Test scores average each image's 8 flips and 90-degree rotations (experiment.tta). Validation is "
            "scored the same way, so the Youden threshold and the numbers of validation are those of the "
            "predictions test gets; below, each model's validation with TTA against the same model without."]
    if hurt:
        names = ", ".join(sorted({f"{r['arm']} (seed {r['seed']}, {r['task']})" for r in hurt}))
        text.append(f"TTA lowered the validation AUC by more than {HURTS} for {len(hurt)} of {len(rows)} models: "
                    f"{names}. Images with a fixed orientation (ultrasound, chest X-ray, fundus) may not be served "
                    "by flips and rotations; consider tta: false.")
    else:
        text.append(f"TTA lowered no model's validation AUC by more than {HURTS} ({len(rows)} models).")
    shifted = [r for r in rows if r.get("shifts scores")]
    if shifted:
        names = ", ".join(sorted({f"{r['arm']} (seed {r['seed']}, {r['task']})" for r in shifted}))
        text.append(f"TTA moved the mean validation score by more than {SHIFT} for {names}: calls at 0.5 move "
                    "with it (accuracy, sensitivity, specificity), while the metrics at the validation Youden "
                    "threshold, chosen on the same TTA scores, follow the shift.")
    return Section("Test-time augmentation", text=text, table=rows,
                   data={"rows": rows, "n_hurt": len(hurt), "hurts_threshold": HURTS, "n_shifted": len(shifted),
                         "shift_threshold": SHIFT})
