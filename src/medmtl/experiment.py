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
PREDICTION_COLUMNS = ["arm", "seed", "task", "split", "id", "group", "y_true"]


def apply_quick(cfg):
    """The config with its ``quick`` overrides applied (dotted keys), for a CPU version in minutes."""
    from medmtl.config import parse_config
    from medmtl.grid_utils import set_dotted

    raw = cfg.model_dump(mode="json")
    for key, value in cfg.quick.items():
        set_dotted(raw, key, value)
    return parse_config(raw, "quick overrides")


def _score_run(run_dir: Path, data, cfg, tasks, split: str, tta: bool, arm: str, seed: int,
               dense: list | None = None):
    """Classification rows of ``tasks`` on ``split``; segmentation/detection rows go to ``dense``."""
    from medmtl.data.dataset import MultiTaskDataset
    from medmtl.engine.predict import default_device, load_run
    from medmtl.evaluation.predictions import dense_rows, prediction_rows, split_scores

    run_cfg, model, specs = load_run(run_dir, device=default_device())
    specs = {s.name: s for s in specs}
    tasks = [t for t in tasks if t in specs]     # a single-task arm is scored on the task it learned
    if not tasks:
        return pd.DataFrame()
    from medmtl.engine.loop import scoring_subset

    ds = MultiTaskDataset(data, split, tasks, preset=run_cfg.data.augmentation, train=False,
                          size=run_cfg.data.size, in_chans=run_cfg.model.trunk.in_chans)
    ds = scoring_subset(ds, run_cfg, split)
    per_image: dict = {}
    scores = split_scores(model, ds, tasks, specs, tta=tta, dense=per_image)
    if dense is not None and per_image:
        dense.append(dense_rows(per_image, ds, data, arm=arm, seed=seed, split=split))
    return prediction_rows(scores, ds, data, specs, arm=arm, seed=seed, split=split)


def mixed_groups(rows: pd.DataFrame) -> list:
    """The groups whose images carry different labels (they have no single truth as one case)."""
    labels = rows.groupby("group")["y_true"].nunique()
    return list(labels[labels > 1].index)


def aggregate_groups(rows: pd.DataFrame, score_cols: list[str], conflicts: str = "error") -> pd.DataFrame:
    """One row per group (lesion or patient): the mean of its images' scores.

    A group's label is its images' label; groups whose images disagree have no single truth for a
    mean score: ``conflicts="error"`` refuses them, ``"drop"`` leaves them out of the group-level
    scores with a warning (BUSI files a few near-duplicate lesions as both benign and malignant).
    """
    bad = mixed_groups(rows)
    if bad:
        if conflicts != "drop":
            raise ValueError(f"groups {bad[:5]} hold images of different classes; they cannot be scored as one case")
        log.warning("%d groups hold images of different classes and are left out of the group-level scores: %s",
                    len(bad), bad[:5])
        rows = rows[~rows["group"].isin(bad)]
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
        image_level = {}
        if spec.evaluate_at == "group":
            # the image-level AUC too: the paper reports both, and it shows what grouping changes
            image_level = {"auc_image": task_metrics(spec, rows["y_true"].to_numpy(), rows[cols].to_numpy()).get("auc")}
            rows = aggregate_groups(rows, cols, conflicts="drop")
        p = rows[cols].to_numpy()
        out.setdefault(arm, {}).setdefault(str(seed), {}).setdefault(task, {})[split] = \
            {**task_metrics(spec, rows["y_true"].to_numpy(), p), **image_level}
    return out


def run_experiment(cfg, *, quick: bool = False, progress: bool = True, workers: int = 1,
                   ray_address: str | None = None) -> Path:
    """Train and score every arm (of every application); returns the run dir holding ``results/``
    (and ``report/``).

    ``workers > 1`` runs the arms x seeds as parallel trials on a local Ray instance, and
    ``ray_address`` on an existing Ray cluster (see :mod:`medmtl.grid.arms`); results are the same
    files either way, and finished arms are never run again.
    """
    from medmtl.grid.execution import parallel

    with parallel(workers, ray_address):
        return _run_experiment(cfg, quick=quick, progress=progress)


def _run_experiment(cfg, *, quick: bool, progress: bool) -> Path:
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
    save_resolved_config(cfg, run_dir)
    apps = cfg.experiment.applications or {"": None}
    unknown = sorted(set(cfg.experiment.evaluate or []) - {t.name for t in cfg.tasks})
    if unknown:
        raise ConfigError(f"experiment.evaluate: {unknown} are not tasks; tasks are {[t.name for t in cfg.tasks]}")
    preds, metrics, summaries, dense = [], {}, {}, []
    for name, app in apps.items():
        acfg = application_config(cfg, name, app) if app is not None else cfg
        app_dir = run_dir / "applications" / name if name else run_dir
        pred, data, summary = _run_comparison(acfg, app_dir, progress)
        preds.append(pred.assign(application=name) if name else pred)
        _merge(metrics, metrics_of(pred, data))
        app_dense = dense_predictions(acfg, app_dir)
        if len(app_dense):
            from medmtl.evaluation.predictions import dense_metrics_of

            dense.append(app_dense.assign(application=name) if name else app_dense)
            _merge(metrics, dense_metrics_of(app_dense))
        summaries.update(summary)
    pred = pd.concat(preds, ignore_index=True)
    results = run_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    pred.to_csv(results / "predictions.csv", index=False)
    if dense:
        pd.concat(dense, ignore_index=True).to_csv(results / "predictions_dense.csv", index=False)
    (results / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    (results / "data.json").write_text(json.dumps(summaries, indent=2, default=int))
    if cfg.loto is not None:
        from medmtl.transfer.loto import run_loto

        run_loto(cfg, prepare(cfg, progress=progress), run_dir)
    _report(run_dir)
    return run_dir


def _run_comparison(cfg, run_dir: Path, progress: bool):
    """Prediction rows of every arm and seed on one main task, the prepared data (the last fold's
    under CV) and the data summary for the report (per fold under CV)."""
    from medmtl.data.pipeline import prepare

    exp = cfg.experiment
    names = [t.name for t in cfg.tasks]
    if exp.main_task not in names:
        raise ConfigError(f"experiment.main_task={exp.main_task!r} is not a task; tasks are {names}")
    if exp.cv is not None:
        return run_cv(cfg, run_dir, progress)
    data = prepare(cfg, progress=progress)
    return run_arms(cfg, data, run_dir, exp.arms, exp.seeds), data, data_summary(data)


def application_config(cfg, name: str, app):
    """The config of one application: its overrides, its main task, its tasks for multi-task arms.

    Only the application's tasks (and the tasks its arms name) are kept, so its data are prepared
    and guarded against leakage on their own.
    """
    from medmtl.config import parse_config
    from medmtl.grid_utils import set_dotted

    where = f"experiment.applications.{name}"
    raw = cfg.model_dump(mode="json")
    for key, value in app.overrides.items():
        set_dotted(raw, key, value)
    exp = raw["experiment"]
    exp["main_task"], exp["applications"] = app.main_task, {}
    keep = {app.main_task, *(app.tasks or [])}
    for arm in exp["arms"]:
        if arm["tasks"] is None and arm["strategy"] in ("mtl", "joint") and app.tasks:
            arm["tasks"] = list(app.tasks)
        keep.update(arm["tasks"] or [])
        keep.update(arm["source"] or [])
    declared = {t["name"] for t in raw["tasks"]}
    if keep - declared:
        raise ConfigError(f"{where}: tasks {sorted(keep - declared)} are not declared in tasks; "
                          f"declared: {sorted(declared)}")
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in keep]
    return parse_config(raw, where)


def _merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def data_summary(data) -> dict:
    """Per task: images per split and class, duplicates, and what the leakage guard found and
    removed (``data inspect``'s summary, skipped files counted: they are listed in the run log)."""
    from medmtl.data.inspect import task_summary

    out = {}
    for task in data.tasks:
        info = task_summary(data, task)
        info["skipped"] = len(info["skipped"])
        out[task] = info
    return out


def run_arms(cfg, data, run_dir: Path, arms, seeds) -> pd.DataFrame:
    """Every arm for every seed under ``run_dir/arms``; a finished arm/seed is not run again.

    With parallel execution (``run_experiment(workers=N)`` or ``ray_address``) the unfinished arms
    run first as grid trials; this loop then only reads their results back.
    """
    from medmtl.grid.execution import is_parallel

    if is_parallel():
        from medmtl.grid.arms import run_arms_on_grid

        run_arms_on_grid(cfg, run_dir, arms, seeds)
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
    # arms that scored no classification task leave an empty frame, which would upset the dtypes
    return pd.concat([f for f in frames if len(f)] or frames, ignore_index=True)


def dense_predictions(cfg, run_dir: Path) -> pd.DataFrame:
    """The per-image segmentation/detection rows (``predictions_dense.csv``) of every arm and seed
    under ``run_dir/arms``; empty when no arm scored such a task."""
    exp = cfg.experiment
    paths = [run_dir / "arms" / a.name / f"seed{s}" / "predictions_dense.csv" for s in exp.seeds for a in exp.arms]
    frames = [pd.read_csv(p, dtype={"id": str, "group": str}) for p in paths if p.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
    frames, folds = [], []
    for f in range(cv.n_splits):
        fcfg = _fold_config(cfg, chosen, f)
        data = prepare(fcfg, progress=progress)
        pred = run_arms(fcfg, data, run_dir / "cv" / f"candidate{chosen}" / f"fold{f}", exp.arms, exp.seeds)
        frames.append(pred.assign(fold=f))
        folds.append(data_summary(data))
    # splits and leakage-guard removals differ from fold to fold: the report lists each
    summary = {task: {**folds[0][task], "folds": [fold[task] for fold in folds]} for task in folds[0]}
    return pd.concat(frames, ignore_index=True), data, summary


def _score_outcome(outcome, arm, seed, data, cfg, arm_dir: Path) -> dict:
    exp = cfg.experiment
    frames = []
    if outcome.scores is not None:
        from medmtl.evaluation.predictions import prediction_rows

        specs = {exp.main_task: data.tasks[exp.main_task]}
        for split, scores in outcome.scores["scores"].items():
            frames.append(prediction_rows(scores, outcome.scores["datasets"][split], data, specs,
                                          arm=arm.name, seed=seed, split=split))
    evaluate = [t for t in (exp.evaluate or [exp.main_task]) if t in data.tasks]
    dense: list[pd.DataFrame] = []
    for sub, run in outcome.runs.items():
        name = arm.name if not sub else f"{arm.name}/{sub}"
        for split in ("val", "test"):
            frames.append(_score_run(run, data, cfg, evaluate, split, exp.tta and split == "test", name, seed,
                                     dense))
    arm_dir.mkdir(parents=True, exist_ok=True)
    pred = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    # an arm without a classification task (stl on segmentation) still writes the header run_arms reads
    (pred if len(pred.columns) else pd.DataFrame(columns=PREDICTION_COLUMNS)).to_csv(
        arm_dir / "predictions.csv", index=False)
    dense_pred = pd.concat(dense, ignore_index=True) if dense else pd.DataFrame()
    if len(dense_pred):
        dense_pred.to_csv(arm_dir / "predictions_dense.csv", index=False)
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
