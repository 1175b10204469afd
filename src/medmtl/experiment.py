"""Run a comparison: every arm of ``experiment`` for every seed, then test scores once, the
results layout (see :mod:`medmtl.evaluation`) and the report.

A finished arm/seed (its ``done.json``) is never trained again, so an interrupted experiment
continues where it stopped.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from medmtl.errors import ConfigError

log = logging.getLogger("medmtl.experiment")


def apply_quick(cfg):
    """The config with its ``quick`` overrides applied (dotted keys), for a CPU version in minutes."""
    from medmtl.config import parse_config
    from medmtl.grid_utils import set_dotted

    raw = cfg.model_dump(mode="json")
    for key, value in cfg.quick.items():
        set_dotted(raw, key, value)
    return parse_config(raw, "quick overrides")


def _score_run(run_dir: Path, data, cfg, tasks, split: str, tta: bool, arm: str, seed: int):
    from medmtl.data.dataset import MultiTaskDataset
    from medmtl.engine.predict import load_run
    from medmtl.evaluation.predictions import prediction_rows, split_scores

    run_cfg, model, specs = load_run(run_dir)
    specs = {s.name: s for s in specs}
    ds = MultiTaskDataset(data, split, tasks, preset=run_cfg.data.augmentation, train=False,
                          size=run_cfg.data.size, in_chans=run_cfg.model.trunk.in_chans)
    scores = split_scores(model, ds, tasks, specs, tta=tta)
    return prediction_rows(scores, ds, data, specs, arm=arm, seed=seed, split=split)


def aggregate_groups(rows: pd.DataFrame, score_cols: list[str]) -> pd.DataFrame:
    """One row per group (lesion or patient): the mean of its images' scores.

    A group's label is its images' label; groups whose images disagree are refused, since a mean
    score would then have no single truth to be compared with.
    """
    labels = rows.groupby("group")["y_true"].nunique()
    if (labels > 1).any():
        bad = list(labels[labels > 1].index[:5])
        raise ValueError(f"groups {bad} hold images of different classes; they cannot be scored as one case")
    agg = rows.groupby("group", sort=True).agg({"y_true": "first", **{c: "mean" for c in score_cols}})
    return agg.reset_index()


def metrics_of(pred: pd.DataFrame, data) -> dict:
    """{arm: {seed: {task: {split: {metric: value}}}}} from prediction rows; tasks declaring
    ``evaluate_at: group`` are scored per lesion/patient (mean of their images' scores)."""
    from medmtl.engine.validate import task_metrics

    out: dict = {}
    for (arm, seed, task, split), rows in pred.groupby(["arm", "seed", "task", "split"]):
        spec = data.tasks[task]
        cols = [f"score_{c}" for c in spec.classes]
        if spec.evaluate_at == "group":
            rows = aggregate_groups(rows, cols)
        p = rows[cols].to_numpy()
        out.setdefault(arm, {}).setdefault(str(seed), {}).setdefault(task, {})[split] = \
            task_metrics(spec, rows["y_true"].to_numpy(), p)
    return out


def run_experiment(cfg, *, quick: bool = False, progress: bool = True) -> Path:
    """Train and score every arm; returns the run dir holding ``results/`` (and ``report/``)."""
    from medmtl.api import save_resolved_config
    from medmtl.data.pipeline import prepare

    if cfg.experiment is None and cfg.loto is None:
        raise ConfigError("this config has neither an 'experiment' section (arms to compare) nor a 'loto' "
                          "section; use 'medmtl train' for one model")
    if quick:
        cfg = apply_quick(cfg)
    run_dir = Path(cfg.run_dir)
    if cfg.experiment is None:
        from medmtl.transfer.loto import run_loto

        save_resolved_config(cfg, run_dir)
        run_loto(cfg, prepare(cfg, progress=progress), run_dir)
        return run_dir
    exp = cfg.experiment
    names = [t.name for t in cfg.tasks]
    if exp.main_task not in names:
        raise ConfigError(f"experiment.main_task={exp.main_task!r} is not a task; tasks are {names}")
    save_resolved_config(cfg, run_dir)
    if exp.cv is not None:
        pred, data = run_cv(cfg, run_dir, progress)
    else:
        data = prepare(cfg, progress=progress)
        pred = run_arms(cfg, data, run_dir, exp.arms, exp.seeds)
    results = run_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    pred.to_csv(results / "predictions.csv", index=False)
    (results / "metrics.json").write_text(json.dumps(metrics_of(pred, data), indent=2, default=float))
    if cfg.loto is not None:
        from medmtl.transfer.loto import run_loto

        run_loto(cfg, data, run_dir)
    _report(run_dir)
    return run_dir


def run_arms(cfg, data, run_dir: Path, arms, seeds) -> pd.DataFrame:
    """Every arm for every seed under ``run_dir/arms``; a finished arm/seed is not run again."""
    from medmtl.transfer.strategies import STRATEGIES, ArmContext

    frames = []
    for seed in seeds:
        finished: dict[str, Path] = {}
        for arm in arms:
            arm_dir = run_dir / "arms" / arm.name / f"seed{seed}"
            done = arm_dir / "done.json"
            if done.is_file():
                record = json.loads(done.read_text())
                log.info("arm %s seed %d already finished: not run again", arm.name, seed)
            else:
                ctx = ArmContext(cfg, arm, data, seed, arm_dir, finished)
                outcome = STRATEGIES.get(arm.strategy)(ctx)
                record = _score_outcome(outcome, arm, seed, data, cfg, arm_dir)
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(record))
            finished[arm.name] = Path(record["runs"].get("", arm_dir))
            frames.append(pd.read_csv(arm_dir / "predictions.csv", dtype={"id": str, "group": str}))
    return pd.concat(frames, ignore_index=True)


def _fold_config(cfg, candidate: int, fold: int):
    """The config with the main task split into ``n_splits`` case-grouped folds (seed ``candidate``)."""
    from medmtl.config import parse_config

    cv = cfg.experiment.cv
    raw = cfg.model_dump(mode="json")
    for t in raw["tasks"]:
        if t["name"] == cfg.experiment.main_task:
            t["split"] = {"method": "kfold", "n_splits": cv.n_splits, "fold": fold, "seed": candidate,
                          "val_fraction": cv.val_fraction}
    raw["experiment"]["cv"] = None
    return parse_config(raw, "cross-validation fold")


def run_cv(cfg, run_dir: Path, progress: bool):
    """N-fold case-grouped stratified CV on a representative split (Samala et al. 2017).

    ``candidates`` seeded fold assignments are tried with the first arm; the representative one has
    the smallest spread of validation AUC across its folds, then the highest mean. All arms are
    then run on its folds; every image is tested exactly once, in the fold that held it out.
    """
    from medmtl.data.pipeline import prepare

    exp, cv = cfg.experiment, cfg.experiment.cv
    spread = {}
    for k in range(cv.candidates):
        aucs = []
        for f in range(cv.n_splits):
            fcfg = _fold_config(cfg, k, f)
            data = prepare(fcfg, progress=progress)
            pred = run_arms(fcfg, data, run_dir / "cv" / f"candidate{k}" / f"fold{f}", exp.arms[:1], [exp.seeds[0]])
            aucs.append(metrics_of(pred[pred.split == "val"], data)[exp.arms[0].name][str(exp.seeds[0])]
                        [exp.main_task]["val"]["auc"])
        spread[k] = (float(pd.Series(aucs).std(ddof=0)), -float(pd.Series(aucs).mean()), aucs)
    chosen = min(spread, key=lambda k: spread[k][:2])
    log.info("representative split: candidate %d (validation AUC per fold %s)", chosen, spread[chosen][2])
    (run_dir / "cv").mkdir(parents=True, exist_ok=True)
    (run_dir / "cv" / "candidates.json").write_text(json.dumps(
        {"chosen": chosen, "candidates": {k: {"val_auc_per_fold": v[2], "std": v[0], "mean": -v[1]}
                                          for k, v in spread.items()}}, indent=2))
    frames = []
    for f in range(cv.n_splits):
        fcfg = _fold_config(cfg, chosen, f)
        data = prepare(fcfg, progress=progress)
        pred = run_arms(fcfg, data, run_dir / "cv" / f"candidate{chosen}" / f"fold{f}", exp.arms, exp.seeds)
        frames.append(pred.assign(fold=f))
    return pd.concat(frames, ignore_index=True), data


def _score_outcome(outcome, arm, seed, data, cfg, arm_dir: Path) -> dict:
    exp = cfg.experiment
    frames = []
    if outcome.scores is not None:
        from medmtl.evaluation.predictions import prediction_rows

        specs = {exp.main_task: data.tasks[exp.main_task]}
        for split, scores in outcome.scores["scores"].items():
            frames.append(prediction_rows(scores, outcome.scores["datasets"][split], data, specs,
                                          arm=arm.name, seed=seed, split=split))
    for sub, run in outcome.runs.items():
        name = arm.name if not sub else f"{arm.name}/{sub}"
        for split in ("val", "test"):
            frames.append(_score_run(run, data, cfg, [exp.main_task], split, exp.tta and split == "test", name, seed))
    arm_dir.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_csv(arm_dir / "predictions.csv", index=False)
    for note in outcome.notes:
        log.info("arm %s seed %d: %s", arm.name, seed, note)
    return {"runs": {k: str(v) for k, v in outcome.runs.items()}, "notes": outcome.notes}


def _report(run_dir: Path) -> None:
    try:
        from medmtl.reports import write_report
    except ImportError:  # pragma: no cover - until the report module lands
        log.warning("report module not available: results written without report.html")
        return
    write_report(run_dir)
