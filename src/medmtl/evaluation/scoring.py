"""Scoring a finished training run on a split, and the metrics of prediction rows."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from medmtl.data.dataset import MultiTaskDataset
from medmtl.engine.build import scoring_subset
from medmtl.engine.predict import default_device, load_run
from medmtl.engine.validate import task_metrics
from medmtl.evaluation import audit
from medmtl.evaluation.groups import aggregate_groups
from medmtl.evaluation.predictions import dense_rows, prediction_rows, split_scores
from medmtl.evaluation.thresholds import youden_threshold
from medmtl.metrics import compute_metric


def score_run(run_dir: Path, data, tasks, split: str, tta: bool, arm: str, seed: int,
              dense: list | None = None) -> pd.DataFrame:
    """Classification rows of ``tasks`` on ``split`` by the run's best checkpoint; segmentation and
    detection rows are appended to ``dense`` (a list of frames) when it is given."""
    run_cfg, model, specs = load_run(run_dir, device=default_device())
    specs = {s.name: s for s in specs}
    tasks = [t for t in tasks if t in specs]     # a single-task arm is scored on the task it learned
    if not tasks:
        return pd.DataFrame()
    ds = MultiTaskDataset(data, split, tasks, preset=run_cfg.data.augmentation, train=False,
                          size=run_cfg.data.size, in_chans=run_cfg.model.trunk.in_chans)
    ds = scoring_subset(ds, run_cfg, split)
    per_image: dict = {}
    scores = split_scores(model, ds, tasks, specs, tta=tta, dense=per_image)
    if dense is not None and per_image:
        dense.append(dense_rows(per_image, ds, data, arm=arm, seed=seed, split=split))
    return prediction_rows(scores, ds, data, specs, arm=arm, seed=seed, split=split)


def metrics_of(pred: pd.DataFrame, data) -> dict:
    """{arm: {seed: {task: {split: {metric: value}}}}} from prediction rows; tasks declaring
    ``evaluate_at: group`` are scored per lesion/patient (mean of their images' scores)."""
    out: dict = {}
    for (arm, seed, task, split), rows in pred.groupby(["arm", "seed", "task", "split"]):
        spec = data.tasks[task]
        cols = [f"score_{c}" for c in spec.classes]
        image_level = {}
        if spec.evaluate_at == "group":
            # the image-level AUC too: the paper reports both, and it shows what grouping changes
            image_level = {"auc_image": task_metrics(spec, rows["y_true"].to_numpy(), rows[cols].to_numpy()).get("auc")}
            rows = aggregate_groups(rows, cols, conflicts="drop")
        p = rows[cols].to_numpy()
        out.setdefault(arm, {}).setdefault(str(seed), {}).setdefault(task, {})[split] = \
            {**task_metrics(spec, rows["y_true"].to_numpy(), p), **image_level}
        if spec.kind == "binary" and split == "test":
            val = pred[(pred.arm == arm) & (pred.seed == seed) & (pred.task == task) & (pred.split == "val")]
            if spec.evaluate_at == "group" and len(val):
                val = aggregate_groups(val, cols, conflicts="drop")
            out[arm][str(seed)][task][split].update(at_validation_threshold(val, rows, cols))
    return out


def at_validation_threshold(val: pd.DataFrame, test: pd.DataFrame, cols: list[str]) -> dict:
    """Test metrics at the Youden threshold chosen on the same model's validation scores (0.5 is what
    every other metric uses): ``threshold_youden`` and ``<metric>_youden``. A model whose validation
    split lacks a class, or whose validation scores are all equal, gets NaN: no threshold can be chosen."""
    names = YOUDEN_METRICS
    try:
        t = youden_threshold(val["y_true"].to_numpy(int), val[cols].to_numpy())
    except (ValueError, KeyError):
        return {"threshold_youden": math.nan, **{f"{n}_youden": math.nan for n in names}}
    y, s = test["y_true"].to_numpy(int), test[cols].to_numpy()[:, 1]
    hard = np.stack([1 - (s >= t), s >= t], axis=1).astype(float)   # scores at 0.5 <=> calls at t
    return {"threshold_youden": t, **{f"{n}_youden": compute_metric(n, y, hard) for n in names}}


# the threshold-dependent metrics reported at the validation Youden threshold too
YOUDEN_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")


def threshold_decisions(metrics: dict) -> list[dict]:
    """The audit's record of each Youden threshold: chosen on the model's validation split."""
    out = []
    for arm, seeds in metrics.items():
        for seed, tasks in seeds.items():
            for task, splits in tasks.items():
                t = (splits.get("test") or {}).get("threshold_youden")
                if t is not None:
                    out.append(audit.decision("threshold", arm=arm, seed=seed, task=task,
                                              reads=audit.reads([task], "val"), chose=t))
    return out
