"""How an experiment's trainings run: one after the other here, or as grid trials on Ray.

``medmtl run --workers N`` / ``--ray-address`` set :data:`EXECUTION` for the whole run
(:func:`parallel`); the arms (:mod:`medmtl.grid.arms`) and the LOTO pool trainings
(:mod:`medmtl.transfer.loto`) then hand their unfinished trainings to :func:`run_trials`. A trial
function rebuilds the config and its prepared data in the worker (:func:`prepared`), once per
worker process, since Ray cannot ship the memory-mapped data.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from medmtl.errors import MedmtlError

EXECUTION = {"workers": 1, "ray_address": None}
_PREPARED: dict[str, tuple] = {}   # config key -> (config, prepared data), in this process


@contextlib.contextmanager
def parallel(workers: int = 1, ray_address: str | None = None) -> Iterator[None]:
    """Run the trainings inside the block as ``workers`` parallel trials (or on ``ray_address``)."""
    EXECUTION.update(workers=workers, ray_address=ray_address)
    try:
        yield
    finally:
        EXECUTION.update(workers=1, ray_address=None)


def is_parallel() -> bool:
    return EXECUTION["workers"] > 1 or bool(EXECUTION["ray_address"])


def prepared(config: dict, where: str):
    """``(parsed config, prepared data)`` of a config dict; prepared once per worker process and
    config (the previous config's data are released: one experiment at a time)."""
    key = json.dumps(config, sort_keys=True)
    if key not in _PREPARED:
        from medmtl.config import parse_config
        from medmtl.data.pipeline import prepare

        cfg = parse_config(config, where)
        _PREPARED.clear()
        _PREPARED[key] = (cfg, prepare(cfg, progress=False))
    return _PREPARED[key]


def run_trials(trials: list, fn, out_dir: Path, what: str) -> None:
    """Run ``trials`` with :func:`medmtl.grid.run_grid` as :data:`EXECUTION` says; a failed trial
    is an error naming its error file (finished trials are kept, so a rerun retries only those)."""
    from medmtl.grid import run_grid

    if not trials:
        return
    workers, address = EXECUTION["workers"], EXECUTION["ray_address"]
    cpus = max(1, (os.cpu_count() or 1) // workers) if address is None else 1
    records = run_grid(trials, fn, out_dir, workers=workers, ray_address=address, cpus_per_trial=cpus,
                       progress=False)
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        raise MedmtlError(f"{len(failed)} {what} trial(s) failed: " + "; ".join(
            f"{r['name']} (see {r['trial_dir']}/error.txt)" for r in failed) + ". Run again to retry them; "
            "finished trials are kept.")
