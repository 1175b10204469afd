"""The one writer of ``RUN_DIR/results/`` (the layout documented in :mod:`medmtl.evaluation`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

PREDICTION_COLUMNS = ["arm", "seed", "task", "split", "id", "group", "y_true"]
# with ``experiment.tta``: the validation rows of the same models scored without TTA
NO_TTA_SPLIT = "val_no_tta"
ROW_DTYPES = {"id": str, "group": str}


def write_json(path: Path, obj) -> None:
    """Atomically: a crash never leaves half a file where a finished result is expected."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def read_rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=ROW_DTYPES)


def merge_nested(into: dict, other: dict) -> None:
    """``into`` updated with ``other`` key by key at every depth ({arm: {seed: {task: ...}}})."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_nested(into[key], value)
        else:
            into[key] = value


def write_results(run_dir: Path, pred: pd.DataFrame, dense: pd.DataFrame | None, metrics: dict,
                  data_summary: dict) -> Path:
    """``predictions.csv``, ``predictions_dense.csv`` (when any), ``metrics.json`` and ``data.json``."""
    results = Path(run_dir) / "results"
    results.mkdir(parents=True, exist_ok=True)
    pred.to_csv(results / "predictions.csv", index=False)
    if dense is not None and len(dense):
        dense.to_csv(results / "predictions_dense.csv", index=False)
    write_json(results / "metrics.json", metrics)
    (results / "data.json").write_text(json.dumps(data_summary, indent=2, default=int))
    return results


def publish_arms(run_dir: Path, pred: pd.DataFrame, metrics: dict, prefix: str,
                 application_of_task: dict[str, str] | None = None) -> None:
    """Add the arms named ``prefix*`` (LOTO's) to ``results/`` beside the experiment's arms, replacing
    earlier ones of that prefix (idempotent); with applications, each row goes to the application
    whose main task is its task, so that per-application views line up."""
    results = Path(run_dir) / "results"
    results.mkdir(parents=True, exist_ok=True)
    pred_path, metrics_path = results / "predictions.csv", results / "metrics.json"
    pred = pred.copy()
    old = read_rows(pred_path) if pred_path.is_file() else pd.DataFrame()
    if "application" in old.columns:
        apps = application_of_task or {}
        pred["application"] = pred["task"].map(lambda t: apps.get(t, t))
    if len(old):
        old = old[~old["arm"].astype(str).str.startswith(prefix)]
    pd.concat([old, pred], ignore_index=True).to_csv(pred_path, index=False)
    merged = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    merged = {a: v for a, v in merged.items() if not a.startswith(prefix)}
    merged.update(metrics)
    write_json(metrics_path, merged)
