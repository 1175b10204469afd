"""Run a comparison: every arm of ``experiment`` for every seed, then test scores once, the
results layout (see :mod:`medmtl.evaluation`) and the report.

A finished arm/seed (its ``done.json``) is never trained again, so an interrupted experiment
continues where it stopped. With a parallel :class:`~medmtl.execution.Executor` the unfinished
arms run first as grid trials, in waves: wave 0 holds the arms without a source arm, wave k those
whose source arm is in an earlier wave; the loop here then only reads their results back.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from medmtl.data.inspect import data_summary
from medmtl.data.pipeline import prepare
from medmtl.errors import ConfigError
from medmtl.evaluation import audit
from medmtl.evaluation.predictions import prediction_rows
from medmtl.evaluation.results import NO_TTA_SPLIT, PREDICTION_COLUMNS, read_rows
from medmtl.evaluation.scoring import score_run
from medmtl.execution import SEQUENTIAL, Executor, Trial, prepared
from medmtl.protocols._base import PROTOCOLS, ProtocolRun
from medmtl.protocols.strategies import ArmContext, create_strategy

log = logging.getLogger("medmtl.protocols")


MULTI_TASK_STRATEGIES = ("mtl", "joint")
SINGLE_TASK_STRATEGIES = ("stl", "sequential", "finetune", "scratch")


def compared_pairs(arms: list[tuple[str, str]], comparisons=()) -> list[tuple[str, str]]:
    """The pairs of arms a study compares: ``experiment.comparisons``, or by default every
    multi-task arm against every single-task arm (``arms`` as (name, strategy), in arm order)."""
    if comparisons:
        return [tuple(p) for p in comparisons]
    multi = [n for n, s in arms if s in MULTI_TASK_STRATEGIES]
    single = [n for n, s in arms if s in SINGLE_TASK_STRATEGIES]
    return [(m, s) for m in multi for s in single]


def arm_dir(run_dir: Path, arm: str, seed: int) -> Path:
    return Path(run_dir) / "arms" / arm / f"seed{seed}"


def run_arms(cfg, data, run_dir: Path, arms, seeds, executor: Executor = SEQUENTIAL,
             splits: tuple = ("val", "test")) -> pd.DataFrame:
    """Every arm for every seed under ``run_dir/arms``, scored on ``splits``; a finished arm/seed is
    not run again. Each arm's decisions and test scorings are kept in its ``done.json`` (see
    :func:`arms_audit`)."""
    if executor.parallel:
        run_arms_on_grid(cfg, run_dir, arms, seeds, executor, splits)
    frames = []
    for seed in seeds:
        finished: dict[str, Path] = {}
        for arm in arms:
            directory = arm_dir(run_dir, arm.name, seed)
            done = directory / "done.json"
            if done.is_file():
                record = json.loads(done.read_text())
                log.info("arm %s seed %d already finished: not run again", arm.name, seed)
            else:
                ctx = ArmContext(cfg, arm, data, seed, directory, finished, splits=tuple(splits))
                outcome = create_strategy(arm.strategy)(ctx)
                record = _score_outcome(outcome, arm, seed, data, cfg, directory, ctx)
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(record))
            finished[arm.name] = Path(record["runs"].get("", directory))
            frames.append(read_rows(directory / "predictions.csv"))
    # arms that scored no classification task leave an empty frame, which would upset the dtypes
    return pd.concat([f for f in frames if len(f)] or frames, ignore_index=True)


def dense_predictions(cfg, run_dir: Path) -> pd.DataFrame:
    """The per-image segmentation/detection rows (``predictions_dense.csv``) of every arm and seed
    under ``run_dir/arms``; empty when no arm scored such a task."""
    exp = cfg.experiment
    paths = [arm_dir(run_dir, a.name, s) / "predictions_dense.csv" for s in exp.seeds for a in exp.arms]
    frames = [read_rows(p) for p in paths if p.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def arms_audit(run_dir: Path, arms, seeds) -> dict:
    """The decisions and test scorings of every finished arm and seed under ``run_dir/arms``."""
    records = [json.loads(p.read_text()) for s in seeds for a in arms
               if (p := arm_dir(run_dir, a.name, s) / "done.json").is_file()]
    return audit.merge(*({"decisions": r.get("decisions", []), "test_scores": r.get("test_scores", [])}
                         for r in records))


def _score_outcome(outcome, arm, seed, data, cfg, directory: Path, ctx) -> dict:
    exp = cfg.experiment
    frames, tested = [], []
    if outcome.scores is not None:
        specs = {exp.main_task: data.tasks[exp.main_task]}
        for split, scores in outcome.scores["scores"].items():
            frames.append(prediction_rows(scores, outcome.scores["datasets"][split], data, specs,
                                          arm=arm.name, seed=seed, split=split))
            if split == "test":
                tested.append(audit.test_score(arm.name, seed, exp.main_task, final=True, why="the arm's SVM"))
    evaluate = [t for t in (exp.evaluate or [exp.main_task]) if t in data.tasks]
    dense: list[pd.DataFrame] = []
    for sub, run in outcome.runs.items():
        name = arm.name if not sub else f"{arm.name}/{sub}"
        for split in ctx.splits:
            # validation is scored as test is (with TTA when on): its threshold and its numbers are
            # then those of the predictions the test split gets
            frames.append(score_run(run, data, evaluate, split, exp.tta, name, seed, dense))
            if split == "test":
                tested += [audit.test_score(name, seed, t, final=True, why="the arm's selected model")
                           for t in evaluate]
        if exp.tta and "val" in ctx.splits:
            # the same model without TTA on validation: what the report compares to show when TTA hurts
            frames.append(score_run(run, data, evaluate, "val", False, name, seed).assign(split=NO_TTA_SPLIT))
    directory.mkdir(parents=True, exist_ok=True)
    pred = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    # an arm without a classification task (stl on segmentation) still writes the header run_arms reads
    (pred if len(pred.columns) else pd.DataFrame(columns=PREDICTION_COLUMNS)).to_csv(
        directory / "predictions.csv", index=False)
    dense_pred = pd.concat(dense, ignore_index=True) if dense else pd.DataFrame()
    if len(dense_pred):
        dense_pred.to_csv(directory / "predictions_dense.csv", index=False)
    for note in outcome.notes:
        log.info("arm %s seed %d: %s", arm.name, seed, note)
    return {"runs": {k: str(v) for k, v in outcome.runs.items()}, "notes": outcome.notes,
            "decisions": ctx.decisions, "test_scores": tested}


# ----------------------------------------------------------------------------- arms as grid trials
def waves(arms) -> list[list]:
    """Arms grouped so that each arm's ``source_arm`` lies in an earlier group."""
    placed: dict[str, int] = {}
    remaining = list(arms)
    out: list[list] = []
    while remaining:
        wave = [a for a in remaining if not a.source_arm or a.source_arm in placed]
        if not wave:
            raise ConfigError(f"arms {[a.name for a in remaining]} name source arms that never run before them: "
                              f"{sorted({a.source_arm for a in remaining})}")
        for a in wave:
            placed[a.name] = len(out)
        out.append(wave)
        remaining = [a for a in remaining if a.name not in placed]
    return out


def run_arms_on_grid(cfg, run_dir: Path, arms, seeds, executor: Executor, splits=("val", "test")) -> None:
    """Run every unfinished (arm, seed) as grid trials, wave by wave; raise if any trial failed.

    A trial writes the arm's usual ``done.json``, so :func:`run_arms` afterwards finds every arm
    finished and only collects its predictions; a finished arm is never run again, by either path.
    """
    run_dir = Path(run_dir).resolve()
    base = cfg.model_dump(mode="json")
    for k, wave in enumerate(waves(arms)):
        trials = []
        for arm in wave:
            for seed in seeds:
                if (arm_dir(run_dir, arm.name, seed) / "done.json").is_file():
                    continue
                params = {"config": base, "arm": arm.name, "seed": seed, "run_dir": str(run_dir),
                          "splits": list(splits)}
                trials.append(Trial(_trial_id(arm.name, seed), f"{arm.name},seed={seed}",
                                    {"arm": arm.name, "seed": seed}, params))
        if trials:
            log.info("arms wave %d: %d trial(s)", k, len(trials))
        executor.run(trials, run_arm_trial, run_dir / "grid", "arm")


def _trial_id(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}".replace("/", "_")


def run_arm_trial(params: dict, trial_dir: Path) -> dict:
    """One (arm, seed) of an experiment: a top-level function, so Ray can ship it to a worker."""
    cfg, data = prepared(params["config"], "experiment trial")
    run_dir = Path(params["run_dir"])
    arm = next(a for a in cfg.experiment.arms if a.name == params["arm"])
    # run_arms with the one arm: its source arm (an earlier wave) is found through its done.json
    run_arms(cfg, data, run_dir, _with_sources(cfg.experiment.arms, arm), [params["seed"]],
             splits=tuple(params.get("splits", ("val", "test"))))
    return json.loads((arm_dir(run_dir, arm.name, params["seed"]) / "done.json").read_text())


def _with_sources(arms, arm) -> list:
    """``arm`` preceded by its chain of source arms (finished already, so only read back)."""
    by_name = {a.name: a for a in arms}
    chain = [arm]
    while chain[0].source_arm:
        chain.insert(0, by_name[chain[0].source_arm])
    return chain


@PROTOCOLS.register("holdout", section="experiment")
def holdout(cfg, run_dir: Path, executor: Executor, progress: bool) -> ProtocolRun:
    """Every arm and seed on the tasks' own train/val/test splits."""
    exp = cfg.experiment
    data = prepare(cfg, progress=progress)
    pred = run_arms(cfg, data, run_dir, exp.arms, exp.seeds, executor)
    return ProtocolRun(pred, data, data_summary(data), arms_audit(run_dir, exp.arms, exp.seeds))
