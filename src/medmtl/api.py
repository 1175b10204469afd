"""The Python API. The CLI only wraps these functions."""
from __future__ import annotations

from pathlib import Path

from medmtl.config import ExperimentConfig, load_config


def _config(config: str | Path | ExperimentConfig) -> ExperimentConfig:
    return config if isinstance(config, ExperimentConfig) else load_config(config)


def prepare_data(config: str | Path | ExperimentConfig, *, progress: bool = True):
    """Read, decode (cached), de-duplicate and split every task of an experiment."""
    from medmtl.data.pipeline import prepare

    return prepare(_config(config), progress=progress)


def inspect_data(config: str | Path | ExperimentConfig, *, progress: bool = True) -> dict:
    """Counts per task, split and class; groups, duplicates and skipped files (``data inspect``)."""
    from medmtl.data.inspect import inspect

    cfg = _config(config)
    data = prepare_data(cfg, progress=progress)
    report = inspect(data)
    _write_skipped(cfg, data)
    return report


def _write_skipped(cfg: ExperimentConfig, data) -> None:
    """Every skipped file is listed in the run dir as well as on screen: nothing drops silently."""
    import csv

    rows = [(t, s.path, s.reason) for t in data.tasks for s in data.source_of(t).skipped]
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "skipped.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["task", "path", "reason"])
        writer.writerows(rows)
