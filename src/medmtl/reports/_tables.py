"""The comparison table: per arm x task (test split), each metric's mean and std over seeds, a 95% CI
and, for AUC, a paired p-value against the first arm; written as JSON, CSV and Markdown.

What the numbers are (the page and ``results.md`` repeat this):

* ``mean``/``std``: over the seeds (std with ddof=1; empty with one seed). Values come from
  ``results/metrics.json``, or are computed from ``predictions.csv`` when that file is absent.
* ``ref``/``ci_low``/``ci_high``: the reference seed's (seed 0, else the smallest) test-set value
  and its 95% CI. AUC: DeLong's CI for a binary task whose images are independent cases (two cases
  and two controls at least); where images share a patient (a group with several images) a
  class-stratified bootstrap that resamples whole groups, since DeLong's variance would be too
  small; every other metric: a plain bootstrap, of whole groups where they repeat (stratifying would
  hide the variance of the class mix). ``ci_method`` says which. The CI is the test-set sampling
  uncertainty of one trained model; ``std`` is the spread over training seeds.
* ``p_value`` (AUC only): each arm against the first arm on the reference seed's test images that
  both arms scored (matched by ``id``): DeLong's paired test under the same condition, else a
  paired stratified bootstrap of the AUC difference over cases or whole groups (re-centred on zero).
* Tasks with ``evaluate_at: group`` are scored per group (the mean score of its images), as the
  experiment runner scores them in ``metrics.json``; CIs, p-values, ROC and confusion use groups.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medmtl.evaluation import stats
from medmtl.kinds import SINGLE_LABEL_KINDS
from medmtl.metrics import METRICS, compute_metric, table_metrics
from medmtl.reports import _sections
from medmtl.reports._layout import CLASSIFICATION, Inputs

SPLIT = "test"
ALPHA = 0.05   # the CIs are 95%
# metrics a bootstrap can recompute from predictions.csv (per-image class scores)
FROM_SCORES = frozenset(n for n in METRICS.names() if METRICS.meta(n).kinds & SINGLE_LABEL_KINDS)
CI_SUFFIXES = ("_ci_low", "_ci_high")


def summarise(inputs: Inputs, *, n_boot: int = 1000) -> list[dict]:
    """One row per arm x task that has a test-split result, in arm then task order."""
    ref = inputs.reference_seed
    rows = []
    for task, info in inputs.tasks.items():
        for arm in inputs.arms:
            per_seed = _seed_metrics(inputs, arm, task)
            if not per_seed:
                continue
            names = _metric_order(info, per_seed)
            seeds = sorted(per_seed)
            row = {"arm": arm, "task": task, "kind": info.kind, "split": SPLIT, "n_seeds": len(seeds),
                   "seeds": seeds, "reference_seed": ref, "metrics": {}}
            pred = inputs.task_predictions(arm, ref, task)
            for name in names:
                vals = {s: per_seed[s].get(name, math.nan) for s in seeds}
                arr = np.array([v for v in vals.values() if v is not None and np.isfinite(v)], float)
                m = {"mean": float(arr.mean()) if arr.size else math.nan,
                     "std": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
                     "values": vals, "ref": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                     "ci_method": "", "p_value": math.nan, "p_method": ""}
                m.update(_ci(inputs, info, pred, name, n_boot, per_seed.get(ref)))
                row["metrics"][name] = m
            rows.append(row)
    _p_values(inputs, rows, n_boot)
    return rows


def _seed_metrics(inputs: Inputs, arm: str, task: str) -> dict[int, dict[str, float]]:
    """{seed: {metric: value}} on the test split: metrics.json when present, else from predictions."""
    out: dict[int, dict[str, float]] = {}
    if inputs.metrics is not None:
        for seed, per_task in inputs.metrics.get(arm, {}).items():
            vals = (per_task.get(task) or {}).get(SPLIT)
            if vals:
                out[int(seed)] = {k: (math.nan if v is None else float(v)) for k, v in vals.items()}
        return out
    info = inputs.tasks[task]
    if info.kind not in CLASSIFICATION:
        return out
    for seed in inputs.seeds:
        rows = inputs.task_predictions(arm, seed, task)
        if rows is None:
            continue
        y, s = rows["y_true"].to_numpy(int), inputs.scores(rows, task)
        names = list(dict.fromkeys([info.metric or "auc", *table_metrics(info.kind)]))
        out[seed] = {n: float(compute_metric(n, y, s)) for n in names if n in FROM_SCORES}
    return out


def _metric_order(info, per_seed: dict) -> list[str]:
    # <metric>_ci_low/_ci_high are the bounds metrics.json stores for segmentation/detection metrics
    present = list(dict.fromkeys(k for v in per_seed.values() for k in v if not k.endswith(CI_SUFFIXES)))
    first = [m for m in [info.metric, *table_metrics(info.kind)] if m in present]
    return list(dict.fromkeys(first + present))


def _ci(inputs: Inputs, info, pred, name: str, n_boot: int, ref_values: dict | None = None) -> dict:
    if info.kind not in CLASSIFICATION:
        ref_values = ref_values or {}
        if f"{name}_ci_low" in ref_values:
            return {"ref": ref_values.get(name, math.nan), "ci_low": ref_values[f"{name}_ci_low"],
                    "ci_high": ref_values[f"{name}_ci_high"],
                    "ci_method": f"bootstrap of the per-image mean over groups (metrics.json), "
                                 f"seed {inputs.reference_seed}"}
        return {"ci_method": f"none: {info.kind} tasks have no per-image scores in predictions.csv"}
    if name not in FROM_SCORES:
        return {"ci_method": f"none: {name} cannot be recomputed from class scores"}
    if pred is None:
        return {"ci_method": f"none: no {SPLIT} predictions for seed {inputs.reference_seed}"}
    y, s = pred["y_true"].to_numpy(int), inputs.scores(pred, info.name)
    groups = pred["group"].astype(str).to_numpy() if "group" in pred.columns else None
    if name == "auc":
        est, lo, hi, method = stats.auc_interval(y, s, groups, n_boot=n_boot, alpha=ALPHA)
    else:
        grouped = stats.repeated_groups(groups)
        est, lo, hi = stats.interval(METRICS.get(name), y, s, groups=groups if grouped else None,
                                     n_boot=n_boot, alpha=ALPHA, stratified=False)
        method = f"bootstrap ({n_boot}" + (f", over {len(np.unique(groups))} groups)" if grouped else ")")
    unit = ", per group (mean score of its images)" if info.evaluate_at == "group" else ""
    return {"ref": est, "ci_low": lo, "ci_high": hi, "ci_method": f"{method}, seed {inputs.reference_seed}{unit}"}


def _p_values(inputs: Inputs, rows: list[dict], n_boot: int) -> None:
    """AUC of each arm against the first arm with predictions for the task, on shared test ids."""
    ref = inputs.reference_seed
    if len(inputs.arms) < 2:
        inputs.note("table", "one arm only: no p-values")
        return
    for task, info in inputs.tasks.items():
        if info.kind not in CLASSIFICATION:
            continue
        arms = [a for a in inputs.arms if inputs.task_predictions(a, ref, task) is not None]
        if len(arms) < 2:
            continue
        base = arms[0]
        base_rows = inputs.task_predictions(base, ref, task).drop_duplicates("id").set_index("id")
        for row in rows:
            if row["task"] != task or row["arm"] == base or "auc" not in row["metrics"]:
                continue
            m = row["metrics"]["auc"]
            m["baseline"] = base
            other = inputs.task_predictions(row["arm"], ref, task)
            if other is None:
                m["p_method"] = f"none: no {SPLIT} predictions for seed {ref}"
                continue
            other = other.drop_duplicates("id").set_index("id")
            ids = base_rows.index.intersection(other.index)
            y = base_rows.loc[ids, "y_true"].to_numpy(int)
            if len(ids) == 0 or not np.array_equal(y, other.loc[ids, "y_true"].to_numpy(int)):
                m["p_method"] = f"none: {row['arm']} and {base} share no test ids with equal labels"
                continue
            s0, s1 = inputs.scores(base_rows.loc[ids], task), inputs.scores(other.loc[ids], task)
            groups = base_rows.loc[ids, "group"].astype(str).to_numpy() if "group" in base_rows.columns else None
            cases = f"{len(ids)} {'groups' if info.evaluate_at == 'group' else 'images'}"
            p, _, how = stats.auc_difference_test(y, s1, s0, groups, n_boot=n_boot)
            m["p_value"] = p
            m["p_method"] = f"{how}, vs {base}, {cases}, seed {ref}"


# -- writing ----------------------------------------------------------------------------------
def metric_names(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(m for r in rows for m in r["metrics"]))


def to_frame(rows: list[dict]) -> pd.DataFrame:
    """Wide table: one row per arm x task, ``<metric>_{mean,std,ref,ci_low,ci_high,p_value}`` columns."""
    records = []
    for r in rows:
        rec = {k: r[k] for k in ("arm", "task", "kind", "split", "n_seeds")}
        rec["seeds"] = ";".join(map(str, r["seeds"]))
        rec["reference_seed"] = r["reference_seed"]
        for name, m in r["metrics"].items():
            for k in ("mean", "std", "ref", "ci_low", "ci_high", "ci_method", "p_value", "p_method"):
                rec[f"{name}_{k}"] = m[k]
        records.append(rec)
    return pd.DataFrame(records)


def _fmt(v, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def format_metric(m: dict) -> str:
    """``mean ± std · ref [low, high]``; parts that are undefined are left out, and with one seed
    (no std, the reference value is the mean) it reads ``value [low, high]``."""
    text = _fmt(m["mean"]) or "n/a"
    if _fmt(m["std"]):
        text += f" ± {_fmt(m['std'])}"
    if _fmt(m["ci_low"]):
        ci = f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]"
        # one seed: the reference value is the mean (compared as numbers: two computations of one
        # AUC can differ in the 16th digit and round to different 3rd digits)
        same = not _fmt(m["std"]) and _fmt(m["ref"]) and math.isclose(m["ref"], m["mean"], abs_tol=1e-9)
        text += f" {ci}" if same else f" · {_fmt(m['ref'])} {ci}"
    return text


def method_lines(rows: list[dict]) -> list[str]:
    """How each task's CI and p-value were computed, one line per task and metric."""
    lines = {}
    for r in rows:
        for n, m in r["metrics"].items():
            if m["ci_method"]:
                text = f"{r['task']} {n}: CI {m['ci_method']}"
                lines.setdefault(text, None)
                if m["p_method"]:
                    lines.setdefault(f"{r['task']} {n} ({r['arm']}): p {m['p_method']}", None)
    return list(lines)


def format_p(m: dict | None) -> str:
    if not m or not _fmt(m.get("p_value", math.nan)):
        return "—" if m and m.get("baseline") is None else ""
    p = m["p_value"]
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_tables(inputs: Inputs, rows: list[dict], out_dir: Path, sections: dict | None = None) -> dict[str, Path]:
    """results.json, results.csv and results.md in ``out_dir`` (with the study ``sections``)."""
    sections = sections or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"results.{k}" for k in ("json", "csv", "md")}
    doc = {"run_dir": str(inputs.run_dir), "split": SPLIT, "arms": inputs.arms, "baseline_arm": inputs.arms[0],
           "seeds": inputs.seeds, "reference_seed": inputs.reference_seed, "ci_level": 1 - ALPHA,
           "rows": rows, "notes": [f"{s}: {m}" for s, m in inputs.notes], "method": __doc__,
           "sections": _sections.json_data(sections)}
    paths["json"].write_text(json.dumps(_json_safe(doc), indent=2))
    to_frame(rows).to_csv(paths["csv"], index=False)
    paths["md"].write_text(markdown(inputs, rows, sections))
    return paths


def markdown(inputs: Inputs, rows: list[dict], sections: dict | None = None) -> str:
    names = metric_names(rows)
    lines = [f"# Results: {inputs.run_dir.name}", "",
             (f"Test split. Cells: mean ± std over seeds · seed-{inputs.reference_seed} value [95% CI] "
              "(one seed: value [95% CI]). "
              f"p: AUC against `{inputs.arms[0]}` (paired, seed {inputs.reference_seed})."), "",
             "| arm | task | " + " | ".join(names) + " | p (AUC) | seeds |",
             "|" + "---|" * (len(names) + 4)]
    for r in rows:
        cells = [format_metric(r["metrics"][n]) if n in r["metrics"] else "" for n in names]
        seeds = f"{r['n_seeds']} ({', '.join(map(str, r['seeds']))})"
        lines.append(f"| {r['arm']} | {r['task']} | " + " | ".join(cells) +
                     f" | {format_p(r['metrics'].get('auc'))} | {seeds} |")
    lines += _sections.markdown(sections or {})
    lines += ["", "## Methods", "", *[f"- {m}" for m in method_lines(rows)]]
    if inputs.notes:
        lines += ["", "## Missing or skipped", "", *[f"- {s}: {m}" for s, m in inputs.notes]]
    return "\n".join(lines) + "\n"
