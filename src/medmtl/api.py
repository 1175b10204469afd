"""The Python API. The CLI only wraps these functions.

Every function that takes a config checks it whole first (:func:`load_config`): its structure by
the schema, then every component name and keyword against its registry, so a mistake anywhere in
the file is reported before any data is read or any model trained.
"""
from __future__ import annotations

import csv
from pathlib import Path

from medmtl.config import ExperimentConfig, save_config
from medmtl.config import load_config as _read_config
from medmtl.data.inspect import inspect
from medmtl.data.pipeline import prepare
from medmtl.engine.loop import fit
from medmtl.engine.predict import predict_files
from medmtl.evaluation.stats import delong_compare
from medmtl.protocols import check_config, run_experiment
from medmtl.reports import write_report


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read a YAML experiment file and check it whole (schema, then every registered name)."""
    return check_config(_read_config(path, overrides))


def _config(config: str | Path | ExperimentConfig) -> ExperimentConfig:
    return check_config(config) if isinstance(config, ExperimentConfig) else load_config(config)


def prepare_data(config: str | Path | ExperimentConfig, *, progress: bool = True):
    """Read, decode (cached), de-duplicate and split every task of an experiment."""
    return prepare(_config(config), progress=progress)


def inspect_data(config: str | Path | ExperimentConfig, *, progress: bool = True) -> dict:
    """Counts per task, split and class; groups, duplicates and skipped files (``data inspect``)."""
    cfg = _config(config)
    data = prepare(cfg, progress=progress)
    report = inspect(data)
    _write_skipped(cfg, data)
    return report


def _write_skipped(cfg: ExperimentConfig, data) -> None:
    """Every skipped file is listed in the run dir as well as on screen: nothing drops silently."""
    rows = [(t, s.path, s.reason) for t in data.tasks for s in data.source_of(t).skipped]
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "skipped.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", "path", "reason"])
        writer.writerows(rows)


def train(config: str | Path | ExperimentConfig | None = None, *, resume: str | Path | None = None,
          devices: int | None = None, progress: bool = True):
    """Train the experiment's model; ``resume=RUN_DIR`` continues an interrupted run exactly.

    Returns:
        :class:`medmtl.engine.loop.FitResult` (best epoch, its validation metrics, history).
    """
    cfg = load_config(Path(resume) / "config.yaml") if resume is not None else _config(config)
    if devices is not None:
        cfg.train.devices = devices
    run_dir = Path(resume) if resume is not None else Path(cfg.run_dir)
    cfg.run_dir = run_dir
    data = prepare(cfg, progress=progress)
    _write_skipped(cfg, data)
    save_config(cfg, run_dir)
    return fit(cfg, data, run_dir, resume=resume is not None, progress=progress)


def run(config: str | Path | ExperimentConfig, *, profile: str | None = None, quick: bool = False,
        progress: bool = True, workers: int = 1, ray_address: str | None = None,
        devices: int | None = None, gpus_per_trial: float | None = None) -> Path:
    """Every arm x seed of the experiment (and its LOTO protocol), then the report; returns the run dir.

    See :func:`medmtl.protocols.run_experiment` for ``profile``, ``workers``, ``ray_address``, ``devices``
    and ``gpus_per_trial``.
    """
    cfg = _config(config)
    run_dir = run_experiment(cfg, profile=profile, quick=quick, progress=progress, workers=workers,
                             ray_address=ray_address, devices=devices, gpus_per_trial=gpus_per_trial)
    if cfg.experiment is not None:
        write_report(run_dir)
    return run_dir


def report(run_dir: str | Path) -> Path:
    """(Re)write the report of a run dir from its ``results/``; returns ``report.html``."""
    return write_report(Path(run_dir))


def delong(y, scores_a, scores_b=None, groups=None, alpha: float = 0.05) -> dict:
    """DeLong AUC CI of one model, or the paired test of two on the same cases (``medmtl stats delong``)."""
    return delong_compare(y, scores_a, scores_b, groups=groups, alpha=alpha)


def predict(run_dir: str | Path, images: list[str | Path], *, task: str | None = None):
    """Per-class scores of a trained run's best checkpoint for image files, as a pandas DataFrame."""
    return predict_files(Path(run_dir), [Path(p) for p in images], task=task)
