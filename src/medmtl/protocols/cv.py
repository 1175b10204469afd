"""N-fold case-grouped stratified cross-validation on a representative split (Samala et al. 2017)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
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
    """``candidates`` seeded fold assignments; the representative one is chosen by
    ``experiment.cv.criterion`` (:func:`balance_scores`, or the reference arm's validation AUC spread,
    scored on validation only and kept apart in ``cv/candidates/``). All arms are then trained on its
    folds; every image is tested exactly once, in the fold that held it out.
    """
    exp, cv = cfg.experiment, cfg.experiment.cv
    if cv.criterion == "balance":
        spread, audits, what = balance_scores(cfg, progress), [], (
            "the test folds' largest deviation from the whole set's class mix plus the spread of their "
            "sizes in cases (no model trained)")
        reads = [{"task": exp.main_task, "split": "all", "as": "class counts"}]
        arm_name, seed = "cv", exp.seeds[0]
    else:
        spread, audits = _reference_scores(cfg, run_dir, executor, progress)
        what = f"smallest spread, then highest mean, of {cv.reference_arm}'s validation AUC over the folds"
        reads, arm_name, seed = audit.reads([exp.main_task], "val"), cv.reference_arm, exp.seeds[0]
    chosen = min(spread, key=lambda k: spread[k][:2])
    log.info("representative split: candidate %d (%s %s)", chosen, cv.criterion, spread[chosen][2])
    audits.append({"decisions": [audit.decision("cv_split", arm=arm_name, seed=seed, task=exp.main_task, reads=reads,
                                                chose=chosen, grid=list(range(cv.candidates)), criterion=what)]})
    (run_dir / "cv").mkdir(parents=True, exist_ok=True)
    (run_dir / "cv" / "candidates.json").write_text(json.dumps(
        {"chosen": chosen, "criterion": cv.criterion,
         "candidates": {k: {"per_fold": v[2], "std": v[0], "mean": -v[1]} if cv.criterion == "reference"
                        else {"per_fold": v[2], "score": v[0]} for k, v in spread.items()}}, indent=2))
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


def _reference_scores(cfg, run_dir: Path, executor: Executor, progress: bool):
    """{candidate: (std, -mean, AUC per fold)} of the reference arm's validation AUC, and the audits."""
    exp, cv = cfg.experiment, cfg.experiment.cv
    arm = next(a for a in exp.arms if a.name == cv.reference_arm)
    seed, spread, audits = exp.seeds[0], {}, []
    for k in range(cv.candidates):
        aucs = []
        for f in range(cv.n_splits):
            fcfg = fold_config(cfg, k, f)
            data = prepare(fcfg, progress=progress)
            fold_dir = run_dir / "cv" / "candidates" / f"candidate{k}" / f"fold{f}"
            pred = run_arms(fcfg, data, fold_dir, [arm], [seed], executor, splits=("val",))
            aucs.append(metrics_of(pred, data)[arm.name][str(seed)][exp.main_task]["val"]["auc"])
            audits.append(arms_audit(fold_dir, [arm], [seed]))
        spread[k] = (float(pd.Series(aucs).std(ddof=0)), -float(pd.Series(aucs).mean()), aucs)
    return spread, audits


def balance_scores(cfg, progress: bool) -> dict[int, tuple]:
    """{candidate: (score, 0, per-fold summary)}: how far each candidate's test folds stray from the
    main task's class mix (largest absolute difference of a class fraction) plus how uneven their
    sizes in cases (groups) are (range / mean). Lower is better; nothing is trained, so the choice
    cannot favour an arm."""
    exp, cv = cfg.experiment, cfg.experiment.cv
    out = {}
    for k in range(cv.candidates):
        folds = []
        for f in range(cv.n_splits):
            data = prepare(fold_config(cfg, k, f), progress=progress)
            task, src = exp.main_task, data.source_of(exp.main_task)
            rows = data.rows(task, "test")
            every = np.flatnonzero(data.has_label(task))
            y, y_all = data.labels[task][rows], data.labels[task][every]
            classes = np.unique(y_all)
            folds.append({"cases": int(len(set(src.groups[rows]))),
                          "deviation": float(max(abs(np.mean(y == c) - np.mean(y_all == c)) for c in classes))})
        cases = np.array([fd["cases"] for fd in folds], float)
        score = max(fd["deviation"] for fd in folds) + float(np.ptp(cases) / max(cases.mean(), 1.0))
        out[k] = (score, 0.0, folds)
    return out
