"""Reading one results directory (the layout documented in ``medmtl.evaluation``).

Every input is optional except that something must be there; what is absent becomes a note that
the report prints, so that a missing figure is always explained.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from medmtl.errors import MedmtlError
from medmtl.evaluation.groups import aggregate_groups, mixed_groups
from medmtl.kinds import SINGLE_LABEL_KINDS

CLASSIFICATION = SINGLE_LABEL_KINDS   # the kinds with one score column per class in predictions.csv
ID_COLUMNS = ("arm", "seed", "task", "split", "id", "group", "y_true")
SCORE_PREFIX = "score_"


@dataclass
class TaskInfo:
    name: str
    kind: str
    classes: tuple[str, ...] = ()
    metric: str | None = None
    domain: str | None = None
    evaluate_at: str = "image"


@dataclass
class Inputs:
    """What a results directory holds. ``notes`` lists (section, message) for every absent input."""

    run_dir: Path
    config: dict
    arms: list[str]
    seeds: list[int]
    arm_dirs: dict[str, dict[int, Path]]
    tasks: dict[str, TaskInfo]
    predictions: pd.DataFrame | None
    metrics: dict | None
    notes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def reference_seed(self) -> int | None:
        """Seed 0 when present, else the smallest: the seed of the CIs, p-values, ROC and confusion figures."""
        return 0 if 0 in self.seeds else (min(self.seeds) if self.seeds else None)

    def note(self, section: str, message: str) -> None:
        self.notes.append((section, message))

    def task_predictions(self, arm: str, seed: int | None, task: str, split: str = "test") -> pd.DataFrame | None:
        """The rows of one arm, seed, task and split; one row per group (its images' mean scores,
        ``id`` = the group) for tasks with ``evaluate_at: group``, as ``metrics.json`` scores them."""
        if self.predictions is None or seed is None:
            return None
        p = self.predictions
        rows = p[(p.arm == arm) & (p.seed == seed) & (p.task == task) & (p.split == split)]
        if not len(rows):
            return None
        info = self.tasks[task]
        if info.evaluate_at != "group":
            return rows

        mixed = mixed_groups(rows)
        if mixed:
            # left out as metrics.json leaves them out: such a group has no single truth
            shown = ", ".join(map(str, mixed[:3])) + (" ..." if len(mixed) > 3 else "")
            note = (f"task {task}, arm {arm}, seed {seed}: {len(mixed)} groups hold images of different classes and "
                    f"are left out of the group-level scores ({shown})")
            if ("table", note) not in self.notes:  # called once per table cell, CI and figure
                self.note("table", note)
            rows = rows[~rows["group"].isin(mixed)]
        agg = aggregate_groups(rows, [SCORE_PREFIX + c for c in info.classes])
        return agg.assign(id=agg["group"], arm=arm, seed=seed, task=task, split=split)

    def scores(self, rows: pd.DataFrame, task: str) -> np.ndarray:
        return rows[[SCORE_PREFIX + c for c in self.tasks[task].classes]].to_numpy(np.float64)


def model_run(path: Path) -> Path | None:
    """The training run of an arm's seed dir: the dir itself when it holds ``checkpoints/best.ckpt``,
    else the run its ``done.json`` names (the experiment runner's record; the arm's own run first)."""
    if (path / "checkpoints" / "best.ckpt").is_file():
        return path
    done = path / "done.json"
    if done.is_file():
        runs = json.loads(done.read_text()).get("runs") or {}
        for key in sorted(runs, key=lambda k: k != ""):
            run = Path(runs[key])
            if (run / "checkpoints" / "best.ckpt").is_file():
                return run
    return None


def _seed_of(key) -> int:
    return int(str(key).removeprefix("seed"))


def read_inputs(run_dir: Path) -> Inputs:
    """Everything :func:`medmtl.reports.write_report` reads from ``run_dir``.

    Raises:
        MedmtlError: ``run_dir`` does not exist or holds none of the results files.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedmtlError(f"report: {run_dir} is not a directory; give the run dir of an experiment or training run")
    notes: list[tuple[str, str]] = []
    config = _read_yaml(run_dir / "config.yaml")
    if config is None:
        notes.append(("inputs", f"{run_dir / 'config.yaml'} is absent: task kinds and classes are inferred"
                                + " from the results files"))
    pred_path = run_dir / "results" / "predictions.csv"
    predictions = None
    if pred_path.is_file():
        predictions = pd.read_csv(pred_path, dtype={"arm": str, "task": str, "split": str, "id": str, "group": str})
        missing = [c for c in ID_COLUMNS if c not in predictions.columns]
        if missing:
            raise MedmtlError(f"{pred_path} lacks columns {missing}; the layout needs {list(ID_COLUMNS)} and "
                              "score_<class> (see medmtl.evaluation)")
        predictions["seed"] = predictions["seed"].astype(int)
    else:
        notes.append(("inputs", f"{pred_path} is absent: no confidence intervals, p-values, ROC curves or"
                                + " confusion matrices (they need per-image scores)"))
    metrics_path = run_dir / "results" / "metrics.json"
    metrics = None
    if metrics_path.is_file():
        metrics = {str(a): {_seed_of(s): v for s, v in seeds.items()}
                   for a, seeds in json.loads(metrics_path.read_text()).items()}
    elif predictions is not None:
        notes.append(("inputs", f"{metrics_path} is absent: the table's metrics are computed from"
                                + " predictions.csv (classification tasks only)"))
    arm_dirs = _arm_dirs(run_dir, config)
    if predictions is None and metrics is None and not arm_dirs:
        raise MedmtlError(f"report: {run_dir} holds no results: expected results/predictions.csv, "
                          "results/metrics.json or arms/<arm>/seed<k>/ (the layout in medmtl.evaluation), "
                          "or a training run with checkpoints/ and history.csv")
    arms = _arm_order(config, metrics, predictions, arm_dirs)
    seeds = sorted({int(s) for a in (metrics or {}).values() for s in a}
                   | (set(predictions["seed"].unique().tolist()) if predictions is not None else set())
                   | {s for d in arm_dirs.values() for s in d})
    tasks = _tasks(config, predictions, metrics)
    return Inputs(run_dir, config or {}, arms, seeds, arm_dirs, tasks, predictions, metrics, notes)


def _read_yaml(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text()) or {}


def _read_json_or_none(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _arm_dirs(run_dir: Path, config: dict | None) -> dict[str, dict[int, Path]]:
    out: dict[str, dict[int, Path]] = {}
    arms_root = run_dir / "arms"
    apps = sorted(p for p in (run_dir / "applications").glob("*/arms") if p.is_dir())
    if apps and not arms_root.is_dir():
        arms_root = apps[0]  # several applications: the model figures show the first one's arms
    chosen = _read_json_or_none(run_dir / "cv" / "candidates.json")
    if chosen is not None and not arms_root.is_dir():
        # cross-validation: the model figures show the representative split's first fold
        arms_root = run_dir / "cv" / f"candidate{chosen['chosen']}" / "fold0" / "arms"
    if arms_root.is_dir():
        for arm in sorted(p for p in arms_root.iterdir() if p.is_dir()):
            seeds = {int(m.group(1)): p for p in arm.iterdir() if (m := re.fullmatch(r"seed(\d+)", p.name))}
            if seeds:
                out[arm.name] = dict(sorted(seeds.items()))
            # an arm of several models (a freeze sweep) is scored as sub-arms "arm/key": their runs
            for seed, path in sorted(seeds.items()):
                runs = (_read_json_or_none(path / "done.json") or {}).get("runs") or {}
                for key, run in runs.items():
                    if key:
                        out.setdefault(f"{arm.name}/{key}", {})[seed] = Path(run)
    elif (run_dir / "history.csv").is_file() or (run_dir / "checkpoints").is_dir():
        # a plain training run: one arm, named after the experiment, with the run's seed
        name = str((config or {}).get("name") or "run")
        out[name] = {int((config or {}).get("seed") or 0): run_dir}
    return out


def _arm_order(config, metrics, predictions, arm_dirs) -> list[str]:
    """Arms in the config's order, then any others in the order the results files list them.
    The first arm is the baseline of the p-values."""
    order: list[str] = []
    exp = (config or {}).get("experiment") or {}
    order += [str(a["name"]) for a in exp.get("arms") or []]
    order += list(metrics or {})
    if predictions is not None:
        order += list(dict.fromkeys(predictions["arm"]))
    order += list(arm_dirs)
    return list(dict.fromkeys(order))


def _tasks(config, predictions, metrics) -> dict[str, TaskInfo]:
    tasks: dict[str, TaskInfo] = {}
    for t in (config or {}).get("tasks") or []:
        tasks[t["name"]] = TaskInfo(t["name"], t["kind"], tuple(t.get("classes") or ()), t.get("metric"),
                                    t.get("domain"), t.get("evaluate_at") or "image")
    if predictions is not None:
        score_cols = [c for c in predictions.columns if c.startswith(SCORE_PREFIX)]
        for name, rows in predictions.groupby("task", sort=False):
            # the classes whose score column is filled on every row of the task, in column order
            classes = tuple(c.removeprefix(SCORE_PREFIX) for c in score_cols if rows[c].notna().all())
            info = tasks.setdefault(name, TaskInfo(name, "binary" if len(classes) == 2 else "multiclass"))
            if not info.classes:
                info.classes = classes
    for seeds in (metrics or {}).values():
        for per_task in seeds.values():
            for name, splits in per_task.items():
                if name not in tasks:
                    names = {m for v in splits.values() for m in v}
                    kind = ("segmentation" if names & {"dice", "iou"} else
                            "detection" if names & {"box_iou", "hit_rate"} else "multiclass")
                    tasks[name] = TaskInfo(name, kind)
    return tasks
