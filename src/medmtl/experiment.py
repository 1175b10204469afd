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
    from medmtl.transfer.strategies import STRATEGIES, ArmContext

    if cfg.experiment is None and cfg.loto is None:
        raise ConfigError("this config has neither an 'experiment' section (arms to compare) nor a 'loto' "
                          "section; use 'medmtl train' for one model")
    if quick:
        cfg = apply_quick(cfg)
    if cfg.experiment is None:
        from medmtl.data.pipeline import prepare
        from medmtl.transfer.loto import run_loto

        save_resolved_config(cfg, Path(cfg.run_dir))
        run_loto(cfg, prepare(cfg, progress=progress), Path(cfg.run_dir))
        return Path(cfg.run_dir)
    exp = cfg.experiment
    names = [t.name for t in cfg.tasks]
    if exp.main_task not in names:
        raise ConfigError(f"experiment.main_task={exp.main_task!r} is not a task; tasks are {names}")
    run_dir = Path(cfg.run_dir)
    save_resolved_config(cfg, run_dir)
    data = prepare(cfg, progress=progress)
    frames = []
    for seed in exp.seeds:
        finished: dict[str, Path] = {}
        for arm in exp.arms:
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
    pred = pd.concat(frames, ignore_index=True)
    results = run_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    pred.to_csv(results / "predictions.csv", index=False)
    (results / "metrics.json").write_text(json.dumps(metrics_of(pred, data), indent=2, default=float))
    _report(run_dir)
    return run_dir


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
