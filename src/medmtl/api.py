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


def save_resolved_config(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """The fully resolved config next to every artefact (paths expanded, defaults filled in)."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def train(config: str | Path | ExperimentConfig, *, resume: str | Path | None = None, devices: int | None = None,
          progress: bool = True):
    """Train the experiment's model; ``resume=RUN_DIR`` continues an interrupted run exactly.

    Returns:
        :class:`medmtl.engine.loop.FitResult` (best epoch, its validation metrics, history).
    """
    from medmtl.engine.loop import fit

    if resume is not None:
        cfg = load_config(Path(resume) / "config.yaml")
    else:
        cfg = _config(config)
    if devices is not None:
        cfg.train.devices = devices
    run_dir = Path(resume) if resume is not None else Path(cfg.run_dir)
    cfg.run_dir = run_dir
    data = prepare_data(cfg, progress=progress)
    _write_skipped(cfg, data)
    save_resolved_config(cfg, run_dir)
    return fit(cfg, data, run_dir, resume=resume is not None, progress=progress)


def predict(run_dir: str | Path, images: list[str | Path], *, task: str | None = None):
    """Per-class scores of a trained run's best checkpoint for image files, as a pandas DataFrame."""
    from medmtl.engine.predict import predict_files

    return predict_files(Path(run_dir), [Path(p) for p in images], task=task)
