"""N-fold case-grouped stratified cross-validation on a representative split (Samala et al. 2017)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from medmtl.config import override_config
from medmtl.data.inspect import data_summary
from medmtl.data.pipeline import prepare
from medmtl.evaluation import audit
from medmtl.evaluation.scoring import metrics_of
from medmtl.execution import Executor
from medmtl.protocols._base import PROTOCOLS, ProtocolRun
from medmtl.protocols.comparison import arms_audit, run_arms

log = logging.getLogger("medmtl.protocols")


def fold_config(cfg, candidate: int, fold: int):
    """The config with the main task split into ``n_splits`` case-grouped folds (seed ``candidate``)."""
    cv = cfg.experiment.cv

    def split_main(raw: dict) -> None:
        for t in raw["tasks"]:
            if t["name"] == cfg.experiment.main_task:
                t["split"] = {"method": "kfold", "n_splits": cv.n_splits, "fold": fold, "seed": candidate,
                              "val_fraction": cv.val_fraction}
        raw["experiment"]["cv"] = None

    return override_config(cfg, {}, "cross-validation fold", edit=split_main)


@PROTOCOLS.register("cv", section="experiment.cv")
def run_cv(cfg, run_dir: Path, executor: Executor, progress: bool) -> ProtocolRun:
    """``candidates`` seeded fold assignments are tried with the first arm; the representative one has
    the smallest spread of validation AUC across its folds, then the highest mean. The candidates'
    models are scored on validation only and kept apart (``cv/candidates/``); all arms are then
    trained afresh on the chosen folds, and every image is tested exactly once, in the fold that
    held it out.
    """
    exp, cv = cfg.experiment, cfg.experiment.cv
    spread, audits = {}, []
    first, seed = exp.arms[0], exp.seeds[0]
    for k in range(cv.candidates):
        aucs = []
        for f in range(cv.n_splits):
            fcfg = fold_config(cfg, k, f)
            data = prepare(fcfg, progress=progress)
            fold_dir = run_dir / "cv" / "candidates" / f"candidate{k}" / f"fold{f}"
            pred = run_arms(fcfg, data, fold_dir, [first], [seed], executor, splits=("val",))
            aucs.append(metrics_of(pred, data)[first.name][str(seed)][exp.main_task]["val"]["auc"])
            audits.append(arms_audit(fold_dir, [first], [seed]))
        spread[k] = (float(pd.Series(aucs).std(ddof=0)), -float(pd.Series(aucs).mean()), aucs)
    chosen = min(spread, key=lambda k: spread[k][:2])
    log.info("representative split: candidate %d (validation AUC per fold %s)", chosen, spread[chosen][2])
    audits.append({"decisions": [audit.decision(
        "cv_split", arm=first.name, seed=seed, task=exp.main_task, reads=audit.reads([exp.main_task], "val"),
        chose=chosen, grid=list(range(cv.candidates)), criterion="smallest spread, then highest mean, of the "
        "first arm's validation AUC over the folds")]})
    (run_dir / "cv").mkdir(parents=True, exist_ok=True)
    (run_dir / "cv" / "candidates.json").write_text(json.dumps(
        {"chosen": chosen, "candidates": {k: {"val_auc_per_fold": v[2], "std": v[0], "mean": -v[1]}
                                          for k, v in spread.items()}}, indent=2))
    frames, folds = [], []
    for f in range(cv.n_splits):
        fcfg = fold_config(cfg, chosen, f)
        data = prepare(fcfg, progress=progress)
        fold_dir = run_dir / "cv" / f"candidate{chosen}" / f"fold{f}"
        pred = run_arms(fcfg, data, fold_dir, exp.arms, exp.seeds, executor)
        frames.append(pred.assign(fold=f))
        folds.append(data_summary(data))
        audits.append(arms_audit(fold_dir, exp.arms, exp.seeds))
    # splits and leakage-guard removals differ from fold to fold: the report lists each
    summary = {task: {**folds[0][task], "folds": [fold[task] for fold in folds]} for task in folds[0]}
    return ProtocolRun(pd.concat(frames, ignore_index=True), data, summary, audit.merge(*audits))
