"""``run_experiment``: the protocols a config asks for, run with one executor, into ``results/``.

The report is the layer above (:func:`medmtl.api.run` writes it afterwards): a protocol writes
results, and the report reads nothing else.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from medmtl._registry import did_you_mean
from medmtl.config import override_config, save_config
from medmtl.config.schema import default_run_dir
from medmtl.errors import ConfigError
from medmtl.evaluation import audit
from medmtl.evaluation.audit import write_audit
from medmtl.evaluation.predictions import dense_metrics_of
from medmtl.evaluation.results import merge_nested, write_results
from medmtl.evaluation.scoring import metrics_of, threshold_decisions
from medmtl.execution import Executor
from medmtl.protocols._base import create_protocol
from medmtl.protocols.applications import application_config
from medmtl.protocols.check import check_config
from medmtl.protocols.comparison import dense_predictions


def apply_profile(cfg, name: str):
    """The config with its profile ``name`` applied (dotted overrides), the name kept in ``profile``."""
    if cfg.profile == name:         # a run dir's saved config, run again with its own profile
        return cfg
    if cfg.profile is not None:
        raise ConfigError(f"this config already had profile {cfg.profile!r} applied; profiles do not stack")
    if name not in cfg.profiles:
        raise ConfigError(f"the config has no profile {name!r}; its profiles: {sorted(cfg.profiles) or 'none'}"
                          f"{did_you_mean(name, cfg.profiles)}")
    overrides = {**cfg.profiles[name], "profile": name}
    if "run_dir" not in overrides and Path(cfg.run_dir) == default_run_dir(cfg.name):
        # its own run dir by default: a finished arm is never re-run, so a standard run in a quick
        # run's dir would report the quick models
        overrides["run_dir"] = str(default_run_dir(f"{cfg.name}-{name}"))
    return override_config(cfg, overrides, f"profiles.{name}")


def _check_same_profile(cfg, run_dir: Path) -> None:
    """Refuse a run dir that holds a run of another profile: its finished arms would be taken as this run's."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    raw = yaml.safe_load(saved.read_text()) or {}
    if "profile" not in raw:
        raise ConfigError(f"{run_dir} holds a run saved before profiles existed (its config.yaml has no "
                          "'profile'): it may be a quick run, whose finished arms would be reported as this "
                          "run's; set run_dir to another directory or remove that one")
    before = raw["profile"]
    if before != cfg.profile:
        raise ConfigError(f"{run_dir} holds a run with profile {before!r}, and this run has profile "
                          f"{cfg.profile!r}: its finished arms would be reported as this run's; set run_dir "
                          "to another directory or remove that one")


def apply_quick(cfg):
    """The config with its ``quick`` profile applied, for a CPU version in minutes."""
    return apply_profile(cfg, "quick")


def run_experiment(cfg, *, profile: str | None = None, quick: bool = False, progress: bool = True,
                   workers: int = 1, ray_address: str | None = None, devices: int | None = None,
                   gpus_per_trial: float | None = None) -> Path:
    """Train and score every arm (of every application); returns the run dir holding ``results/``.

    ``profile`` applies one of the config's profiles first (``quick=True`` is ``profile="quick"``).
    ``workers > 1`` runs the arms x seeds as parallel trials on a local Ray instance, and
    ``ray_address`` on an existing Ray cluster; results are the same files either way, and
    finished arms are never run again. Every name in the config is checked first
    (:func:`check_config`), so a misspelled strategy of the last arm stops the run before any training.
    ``devices`` (``train.devices``) trains each model on that many DDP processes, one training at a
    time; everything else runs once, in this process. ``gpus_per_trial``: what each parallel trial
    reserves (see :func:`medmtl.execution.run_grid`).
    """
    if devices is not None and devices > 1 and (workers > 1 or ray_address):
        raise ConfigError(f"--devices {devices} with parallel trials (--workers / --ray-address): each would "
                          "start its own DDP processes on the same devices; choose one of the two")
    executor = Executor(workers, ray_address, gpus_per_trial)
    if cfg.experiment is None and cfg.loto is None:
        raise ConfigError("this config has neither an 'experiment' section (arms to compare) nor a 'loto' "
                          "section; use 'medmtl train' for one model")
    if quick and profile not in (None, "quick"):
        raise ConfigError(f"quick=True and profile={profile!r} ask for two profiles; give one")
    profile = "quick" if quick else profile
    if profile is not None:
        cfg = apply_profile(cfg, profile)
    if devices is not None:
        cfg = override_config(cfg, {"train.devices": devices}, "--devices")
    check_config(cfg)
    run_dir = Path(cfg.run_dir)
    _check_same_profile(cfg, run_dir)
    save_config(cfg, run_dir)
    audits = []
    if cfg.experiment is not None:
        audits.append(_run_comparisons(cfg, run_dir, executor, progress))
    if cfg.loto is not None:
        audits.append(create_protocol("loto")(cfg, run_dir, executor, progress).audit)
    write_audit(run_dir, audit.merge(*audits))    # fails the run if a decision saw what it must not
    return run_dir


def _run_comparisons(cfg, run_dir: Path, executor: Executor, progress: bool) -> dict:
    """Each application's comparison (or the one of the config), into one ``results/``; returns the
    merged audit of their decisions."""
    apps = cfg.experiment.applications or {"": None}
    preds, metrics, summaries, dense, audits = [], {}, {}, [], []
    for name, app in apps.items():
        acfg = application_config(cfg, name, app) if app is not None else cfg
        app_dir = run_dir / "applications" / name if name else run_dir
        run = create_protocol("cv" if acfg.experiment.cv is not None else "holdout")(acfg, app_dir, executor, progress)
        preds.append(run.pred.assign(application=name) if name else run.pred)
        merge_nested(metrics, metrics_of(run.pred, run.data))
        app_dense = dense_predictions(acfg, app_dir)
        if len(app_dense):
            dense.append(app_dense.assign(application=name) if name else app_dense)
            merge_nested(metrics, dense_metrics_of(app_dense))
        summaries.update(run.summary)
        audits.append(run.audit)
    write_results(run_dir, pd.concat(preds, ignore_index=True),
                  pd.concat(dense, ignore_index=True) if dense else None, metrics, summaries)
    return audit.merge(*audits, {"decisions": threshold_decisions(metrics)})
