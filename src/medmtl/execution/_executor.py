"""How a protocol's trainings run: one after the other here, or as grid trials on Ray.

A protocol (:mod:`medmtl.protocols`) is handed an :class:`Executor`; it turns its unfinished
trainings into :class:`~medmtl.execution.Trial` objects and calls :meth:`Executor.run`. The
executor knows nothing of protocols: a trial is a function and its JSON parameters. A trial
function rebuilds its config and prepared data in the worker (:func:`prepared`), once per worker
process, since Ray cannot ship the memory-mapped data.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from medmtl.config import parse_config
from medmtl.data.pipeline import prepare
from medmtl.errors import ConfigError, MedmtlError
from medmtl.execution._run import check_gpus_per_trial, run_grid
from medmtl.execution._trial import TrialFn

_PREPARED: dict[str, tuple] = {}   # config key -> (config, prepared data), in this process


@dataclass(frozen=True)
class Executor:
    """``workers`` trials at a time on a local Ray instance, or on the cluster at ``ray_address``;
    ``workers=1`` without an address runs nothing ahead: the protocol trains in its own loop."""

    workers: int = 1
    ray_address: str | None = None
    gpus_per_trial: float | None = None    # None: 1 when CUDA is present (see run_grid)

    def __post_init__(self):
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers={self.workers!r} must be a positive integer")
        if self.gpus_per_trial is not None:
            check_gpus_per_trial(self.gpus_per_trial)

    @property
    def parallel(self) -> bool:
        return self.workers > 1 or bool(self.ray_address)

    def run(self, trials: list, fn: TrialFn, out_dir: Path, what: str) -> None:
        """Run ``trials`` with :func:`medmtl.execution.run_grid`; a failed trial is an error naming its
        error file (finished trials are kept, so a rerun retries only the failed ones)."""
        if not trials:
            return
        cpus = max(1, (os.cpu_count() or 1) // self.workers) if self.ray_address is None else 1
        records = run_grid(trials, fn, out_dir, workers=self.workers, ray_address=self.ray_address,
                           cpus_per_trial=cpus, gpus_per_trial=self.gpus_per_trial, progress=False)
        failed = [r for r in records if r["status"] == "failed"]
        if failed:
            raise MedmtlError(f"{len(failed)} {what} trial(s) failed: " + "; ".join(
                f"{r['name']} (see {r['trial_dir']}/error.txt)" for r in failed) + ". Run again to retry them; "
                "finished trials are kept.")


SEQUENTIAL = Executor()


def prepared(config: dict, where: str):
    """``(parsed config, prepared data)`` of a config dict; prepared once per worker process and
    config (the previous config's data are released: one experiment at a time)."""
    key = json.dumps(config, sort_keys=True)
    if key not in _PREPARED:
        cfg = parse_config(config, where)
        _PREPARED.clear()
        _PREPARED[key] = (cfg, prepare(cfg, progress=False))
    return _PREPARED[key]
