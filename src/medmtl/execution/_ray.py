"""The Ray Tune backend: one Tune trial per pending configuration, same marker files as sequential.

Only the grid's own files (``out_dir/trials``) decide what is finished; Tune's experiment state
under ``out_dir/ray`` is a by-product and is never restored, so a rerun submits just the trials
that have no ``result.json``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from medmtl.execution._expand import Trial
from medmtl.execution._trial import ERROR, RESULT, TrialFn, read_result, run_trial, trial_dir, write_atomic

# RAY_CHDIR_TO_TRIAL_DIR=0: trials keep the caller's working directory, as in the sequential
# backend, so relative paths in a config mean the same thing in both.
# RAY_AIR_NEW_OUTPUT=0: with Tune's newer console output, verbose=0 still prints a config table.
# TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1: the grid's result.json is the record; Tune's CSV, JSON and
# TensorBoard loggers would add a second result.json per trial and took ~2 s of start-up on 2 cores.
_RAY_ENV = {"RAY_CHDIR_TO_TRIAL_DIR": "0", "RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


def run_on_ray(pending: list[Trial], fn: TrialFn, out_dir: Path, *, workers: int, ray_address: str | None,
               cpus_per_trial: int, progress: bool, gpus_per_trial: float = 0.0) -> dict[str, dict]:
    """Run ``pending`` as Ray Tune trials; returns each trial's outcome as read back from its directory."""
    import ray  # lazy: Ray is the optional parallel backend (--workers, --ray-address)

    with _environ(_RAY_ENV):
        started = _connect(ray, workers=workers, cpus_per_trial=cpus_per_trial, ray_address=ray_address)
        try:
            tune_errors = _fit(pending, fn, out_dir, workers=workers, ray_address=ray_address,
                               cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, progress=progress)
        finally:
            if started:   # a Ray instance the caller set up is theirs to shut down
                ray.shutdown()
    return {t.trial_id: _outcome(trial_dir(out_dir, t.trial_id), tune_errors.get(t.trial_id)) for t in pending}


def _connect(ray, *, workers: int, cpus_per_trial: int, ray_address: str | None) -> bool:
    """Start or join Ray unless the caller already did; True when this call did it."""
    if ray.is_initialized():
        return False
    # log_to_driver=False: trial output stays in Ray's session logs instead of interleaving on
    # the console; ERROR level hides Ray's start-up notices but not its failures. The session logs
    # stay in Ray's default temp dir: under a deep out_dir, Ray's socket paths would exceed the
    # 107-byte AF_UNIX limit and ray.init would fail.
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if ray_address is not None:
        ray.init(address=ray_address, **quiet)
    else:
        # address="local": always a fresh instance of our size, never a cluster named by RAY_ADDRESS.
        ray.init(address="local", num_cpus=workers * cpus_per_trial, include_dashboard=False, **quiet)
    return True


def _fit(pending: list[Trial], fn: TrialFn, out_dir: Path, *, workers: int, ray_address: str | None,
         cpus_per_trial: int, gpus_per_trial: float, progress: bool) -> dict[str, str]:
    """Run the Tune experiment; returns Tune's error text for trials that died outside ``fn``."""
    from ray import tune  # lazy: as ray above

    jobs = {t.trial_id: (t.params, str(trial_dir(out_dir, t.trial_id))) for t in pending}
    trainable = tune.with_parameters(_trainable, fn=fn, jobs=jobs, threads=cpus_per_trial)
    # On a cluster with workers=1 the cluster's free CPUs set the concurrency, not a cap of one.
    limit = workers if ray_address is None or workers > 1 else None
    tuner = tune.Tuner(
        # a trial that reserves no GPU gets CUDA_VISIBLE_DEVICES="" from Ray: it would train on the CPU
        tune.with_resources(trainable, {"cpu": cpus_per_trial, **({"gpu": gpus_per_trial} if gpus_per_trial else {})}),
        param_space={"trial_id": tune.grid_search(list(jobs))},
        # reuse_actors: a fresh actor per trial costs seconds (a process importing ray.tune and
        # torch), which would eat much of the speed-up on short trials.
        tune_config=tune.TuneConfig(max_concurrent_trials=limit, reuse_actors=True,
                                    trial_dirname_creator=_tune_dirname),
        run_config=tune.RunConfig(name=_experiment_name(), storage_path=str(out_dir / "ray"),
                                  verbose=0, callbacks=[_progress_callback(len(jobs))] if progress else None),
    )
    results = tuner.fit()
    return {r.config["trial_id"]: str(r.error) for r in results if r.error is not None}


def _trainable(config: dict, *, fn: TrialFn, jobs: dict[str, tuple[dict, str]], threads: int) -> None:
    """Tune's function trainable: one grid trial, reported to Tune only by its status."""
    from ray import tune  # lazy: as ray above

    params, directory = jobs[config["trial_id"]]
    outcome = run_trial(fn, params, Path(directory), threads)
    tune.report({"status": outcome["status"]})


def _experiment_name() -> str:
    # Unique per call: a rerun within the same second must not reopen the last run's Tune state.
    return f"grid-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _tune_dirname(trial) -> str:
    return trial.config["trial_id"]


def _outcome(directory: Path, tune_error: str | None) -> dict:
    """What the trial left on disk; a trial with neither marker died outside ``fn`` (or never ran)."""
    result = read_result(directory)
    if result is not None:
        return {"status": "done", "result": result}
    if (directory / ERROR).exists():
        return {"status": "failed", "error": (directory / ERROR).read_text()}
    error = (f"Ray Tune reported: {tune_error}" if tune_error else
             f"Ray Tune ended without running this trial to completion (no {RESULT})")
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / ERROR, error + "\n")
    return {"status": "failed", "error": error}


def _progress_callback(total: int):
    from ray import tune  # lazy: as ray above

    class _Progress(tune.Callback):
        """A tqdm bar advanced as Tune trials end (Tune's own reporter is silenced)."""

        def setup(self, **info) -> None:
            self.bar = tqdm(total=total, desc="grid", unit="trial", leave=False)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.bar.update(1)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self.bar.update(1)

        def on_experiment_end(self, trials, **info) -> None:
            self.bar.close()

    return _Progress()


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the Ray run only; Tune copies them to its trial processes."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
