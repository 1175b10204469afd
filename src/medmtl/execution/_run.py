"""``run_grid``: skip finished trials, run the rest on the chosen backend, report every failure."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medmtl.errors import ConfigError
from medmtl.execution._expand import Trial
from medmtl.execution._ray import run_on_ray
from medmtl.execution._trial import TrialFn, as_stored, read_params, read_result, run_trial, trial_dir

log = logging.getLogger("medmtl.execution")


def run_grid(trials: Iterable[Trial], fn: TrialFn, out_dir: str | Path, *, workers: int = 1,
             ray_address: str | None = None, cpus_per_trial: int = 1, gpus_per_trial: float | None = None,
             progress: bool = True) -> list[dict]:
    """Run every trial that has not finished yet, one ``fn`` call per trial.

    With ``workers=1`` and no ``ray_address`` trials run one after another in this process.
    Otherwise each pending trial becomes one Ray Tune trial: on a local Ray instance with
    ``workers * cpus_per_trial`` CPUs and at most ``workers`` trials at a time, or on the cluster at
    ``ray_address`` (there ``workers > 1`` caps the concurrency, ``workers=1`` lets the cluster's
    CPUs decide). Either way ``fn`` runs with ``cpus_per_trial`` torch threads; for a sequential
    run on a whole machine pass ``cpus_per_trial=os.cpu_count()``.

    Args:
        trials: From :func:`expand_grid`; ids must be unique.
        fn: ``fn(params, trial_dir) -> dict``, a top-level (picklable) function, since Ray ships it
            to worker processes; the dict must be JSON-serialisable.
        out_dir: Trials write to ``out_dir/trials/<trial_id>/``; Ray Tune's own files go to ``out_dir/ray``.
        workers: Trials run at the same time.
        ray_address: Address of an existing Ray cluster (``"auto"`` or ``"ray://host:10001"``).
        cpus_per_trial: CPUs reserved for, and torch threads used by, each trial.
        gpus_per_trial: GPUs each Ray trial reserves (Ray makes only those visible to it; a trial
            that reserves none sees no GPU and trains on the CPU). A fraction shares a GPU between
            trials (0.5: two per GPU); above 1 it must be whole. ``None``: 1 when this process sees
            a CUDA GPU, else 0. On a cluster whose driver has no GPU, give it.
        progress: Show a progress bar.

    Returns:
        One record per trial, in the order given: ``trial_id``, ``name``, ``assignment``, ``trial_dir``,
        ``status`` (``"done"``: ran now; ``"cached"``: finished in an earlier run, not run again;
        ``"failed"``: raised, see ``error``, retried by the next run), ``result`` and ``error``.

    Note:
        A Ray instance that the caller already started is used as it is and left running. On a
        cluster, ``out_dir`` must be on storage that every node sees and medmtl must be installed on
        every node, since trials write their markers there and import ``fn`` there.

    Raises:
        ConfigError: For an invalid option, a repeated trial id, or a finished trial whose stored
            config differs from the one given now (its result would silently stand for another config).
    """
    trials = list(trials)
    _check_options(workers=workers, ray_address=ray_address, cpus_per_trial=cpus_per_trial)
    gpus_per_trial = check_gpus_per_trial(gpus_per_trial)
    _check_unique(trials)
    out_dir = Path(out_dir).resolve()   # Ray workers may run in another working directory
    cached = _finished(trials, out_dir)
    pending = [t for t in trials if t.trial_id not in cached]
    outcomes = dict.fromkeys(cached, None)
    if pending and workers == 1 and ray_address is None:
        outcomes.update(_run_sequential(pending, fn, out_dir, threads=cpus_per_trial, progress=progress))
    elif pending:
        outcomes.update(run_on_ray(pending, fn, out_dir, workers=workers, ray_address=ray_address,
                                   cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, progress=progress))
    records = [_record(t, out_dir, cached.get(t.trial_id), outcomes[t.trial_id]) for t in trials]
    _report(records)
    return records


def _check_options(*, workers: Any, ray_address: Any, cpus_per_trial: Any) -> None:
    for name, value in (("workers", workers), ("cpus_per_trial", cpus_per_trial)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer")
    if ray_address is not None and (not isinstance(ray_address, str) or not ray_address):
        raise ConfigError(f"ray_address={ray_address!r} must be a Ray address such as 'auto' or "
                          "'ray://host:10001', or None for a local run")


def check_gpus_per_trial(value: Any) -> float:
    """``gpus_per_trial`` as a number of GPUs (``None``: 1 when CUDA is present here, else 0)."""
    if value is None:
        return 1.0 if torch.cuda.is_available() else 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or (value > 1 and value % 1):
        raise ConfigError(f"gpus_per_trial={value!r} must be a number >= 0: a fraction of one GPU (0.5 shares "
                          "a GPU between two trials) or a whole number of GPUs")
    return float(value)


def _check_unique(trials: list[Trial]) -> None:
    seen: dict[str, str] = {}
    for t in trials:
        if t.trial_id in seen:
            raise ConfigError(f"trials {seen[t.trial_id]!r} and {t.name!r} share the id {t.trial_id!r}, "
                              "so they would write to one directory; pass each configuration once")
        seen[t.trial_id] = t.name


def _finished(trials: list[Trial], out_dir: Path) -> dict[str, dict]:
    """Stored results of finished trials, refusing any that ran with a different config."""
    done = {}
    for t in trials:
        directory = trial_dir(out_dir, t.trial_id)
        result = read_result(directory)
        if result is None:
            continue
        stored = read_params(directory)
        if stored is not None and stored != as_stored(t.params):
            changed = sorted(_diff(stored, as_stored(t.params)))
            raise ConfigError(f"trial {t.name!r} ({t.trial_id}) finished in {directory} with another config "
                              f"(differs at {changed[:5]}); use a new out_dir for the new base config, "
                              "or delete that trial directory to run it again")
        done[t.trial_id] = result
    return done


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    """Dotted keys at which two nested configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set().union(*(_diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k)) for k in set(a) | set(b)))
    return set() if a == b else {prefix or "<root>"}


def _run_sequential(pending: list[Trial], fn: TrialFn, out_dir: Path, *, threads: int,
                    progress: bool) -> dict[str, dict]:
    outcomes = {}
    for t in tqdm(pending, desc="grid", unit="trial", disable=not progress, leave=False):
        outcomes[t.trial_id] = run_trial(fn, t.params, trial_dir(out_dir, t.trial_id), threads)
    return outcomes


def _record(t: Trial, out_dir: Path, cached: dict | None, outcome: dict | None) -> dict:
    record = {"trial_id": t.trial_id, "name": t.name, "assignment": t.assignment,
              "trial_dir": str(trial_dir(out_dir, t.trial_id)), "result": None, "error": None}
    if outcome is None:
        return {**record, "status": "cached", "result": cached}
    return {**record, **outcome}


def _report(records: list[dict]) -> None:
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "cached", "failed")}
    log.info("grid: %(done)d run, %(cached)d already finished, %(failed)d failed", counts)
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        lines = "\n".join(f"  {r['trial_id']} {r['name']}: {_last_line(r['error'])} "
                          f"(see {r['trial_dir']}/error.txt)" for r in failed)
        log.warning("grid: %d of %d trials failed; running the grid again retries them:\n%s",
                    len(failed), len(records), lines)


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no error text"
