"""Our numbers beside the published ones of the study a config follows (``experiment.reference``).

The published values were typed into the config by hand; the table labels them as such, and the
note says how the data differ (a study reproduced on other public data is not a replication).
"""
from __future__ import annotations

import math

import numpy as np

from medmtl.reports._sections import REPORT_SECTIONS, Section, seed_values
from medmtl.reports.section_training import _runs, best_row


def _mean_std_n(vals: list[float]) -> tuple[float, float, int]:
    """(mean, std over seeds with ddof=1, n); NaN where undefined (no value, or one for the std)."""
    if not vals:
        return math.nan, math.nan, 0
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan, len(vals)


def ours(metrics: dict | None, arm: str, task: str, split: str, metric: str) -> tuple[float, float, int]:
    """(mean, std, n seeds) of ``metric`` in ``metrics.json`` (``{arm: {seed: {task: {split: {...}}}}}``)."""
    return _mean_std_n(seed_values(metrics, arm, task, split, metric))


HISTORY_COLUMNS = {("train", "loss"): "train_loss", ("train", "accuracy"): "train_accuracy",
                   ("val", "loss"): "val_cross_entropy", ("val", "cross_entropy"): "val_cross_entropy"}


def from_history(inputs, v: dict) -> tuple[float, float, int]:
    """(mean, std, n seeds) of a value at the best epoch of each seed's run (``history.csv``)."""
    split, metric = v.get("split", "test"), v.get("metric", "auc")
    column = f"{HISTORY_COLUMNS.get((split, metric), f'{split}_{metric}')}/{v['task']}"
    vals = []
    for seed_dir in inputs.arm_dirs.get(v["arm"], {}).values():
        runs = _runs(seed_dir)
        run = runs.get(v.get("model") or "") or runs.get("model")
        row = best_row(run) if run is not None else None
        if row is not None and column in row.index and not np.isnan(row[column]):
            vals.append(float(row[column]))
    return _mean_std_n(vals)


@REPORT_SECTIONS.register("reference", order=20)
def reference_section(inputs) -> Section | None:
    ref = ((inputs.config or {}).get("experiment") or {}).get("reference")
    if not ref:
        return None
    rows = []
    for v in ref.get("values") or []:
        if v.get("read_from") == "history":
            mean, std, n = from_history(inputs, v)
        else:
            mean, std, n = ours(inputs.metrics, v["arm"], v["task"], v.get("split", "test"), v.get("metric", "auc"))
        scale = float(v.get("scale", 1.0))
        if n == 0:
            inputs.note("sections", f"reference value {v['label']!r}: no {v.get('metric', 'auc')} of arm {v['arm']!r} "
                                    f"on {v['task']}/{v.get('split', 'test')} in results/metrics.json")
        rows.append({"quantity": v["label"], "arm": v["arm"], "task": v["task"], "split": v.get("split", "test"),
                     "metric": v.get("metric", "auc"), "published": float(v["published"]),
                     "ours (mean)": mean * scale, "ours (std)": std * scale, "seeds": n,
                     "difference": mean * scale - float(v["published"])})
    text = [f"Published values (typed in from {ref['source']}) beside ours; ours are means over seeds "
            "from results/metrics.json, scaled to the paper's unit."]
    if ref.get("note"):
        text.append(ref["note"])
    return Section("Reference values: ours vs published", text=text, table=rows, data=rows)
