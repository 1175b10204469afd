"""Grid expansion and the resumable grid runner, sequential and on Ray Tune.

Trial functions are top-level so Ray can ship them to its worker processes; they count their
calls by appending to a file named in the config, since a trial may run in another process.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from medmtl.config import set_dotted
from medmtl.errors import ConfigError
from medmtl.execution import Trial, expand_grid, run_grid

BASE = {"seed": 0, "train": {"epochs": 1, "optimizer": {"lr": 0.1, "momentum": 0.9}}, "calls": ""}


def _base(tmp_path: Path, **extra) -> dict:
    return {**BASE, "calls": str(tmp_path / "calls.log"), **extra}


def _calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls.log"
    return path.read_text().split() if path.exists() else []


def score_trial(params: dict, trial_dir: Path) -> dict:
    """A deterministic 'training run': the score depends on the config only."""
    import torch

    with open(params["calls"], "a") as fh:   # one short append per call: safe across processes
        fh.write(f"{trial_dir.name}\n")
    start = time.time()
    time.sleep(params.get("sleep", 0))
    lr, seed = params["train"]["optimizer"]["lr"], params["seed"]
    (trial_dir / "artefact.txt").write_text("written by the trial")
    return {"score": round(lr * 100 + seed, 6), "pid": os.getpid(), "threads": torch.get_num_threads(),
            "start": start, "end": time.time()}


def flaky_trial(params: dict, trial_dir: Path) -> dict:
    """Fails for seed 1 while the flag file exists."""
    if params["seed"] == 1 and Path(params["fail_flag"]).exists():
        raise RuntimeError(f"diverged at lr={params['train']['optimizer']['lr']}")
    return score_trial(params, trial_dir)


def crashing_trial(params: dict, trial_dir: Path) -> dict:
    """The process is interrupted (Ctrl-C, a kill) when it reaches the third trial."""
    if len(_calls(Path(params["calls"]).parent)) == 2:
        raise KeyboardInterrupt
    return score_trial(params, trial_dir)


def listed_result_trial(params: dict, trial_dir: Path):
    return [params["seed"]]


def gpu_probe_trial(params: dict, trial_dir: Path) -> dict:
    """What a Ray trial was given: its GPU ids and the devices CUDA would see."""
    import ray

    time.sleep(params.get("sleep", 0))
    return {"gpu_ids": [str(g) for g in ray.get_gpu_ids()], "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "end": time.time()}


def _scores(records: list[dict]) -> dict[str, float]:
    return {r["name"]: r["result"]["score"] for r in records}


# --- expand_grid ------------------------------------------------------------------------------

def test_expand_grid_is_the_product_with_stable_ids():
    axes = {"train.optimizer.lr": [0.1, 0.01, 0.001], "seed": [0, 1]}
    trials = expand_grid(BASE, axes)
    assert len(trials) == 6 and all(isinstance(t, Trial) for t in trials)
    assert [t.name for t in trials[:3]] == ["lr=0.1,seed=0", "lr=0.1,seed=1", "lr=0.01,seed=0"]
    assert trials[2].params["train"]["optimizer"] == {"lr": 0.01, "momentum": 0.9}
    assert trials[2].params["seed"] == 0 and BASE["train"]["optimizer"]["lr"] == 0.1   # base untouched
    ids = [t.trial_id for t in trials]
    assert len(set(ids)) == 6 and all(len(i) == 12 for i in ids)
    assert ids == [t.trial_id for t in expand_grid(BASE, axes)]
    # Reordering the axes or growing one keeps the ids of the existing configurations.
    reordered = expand_grid(BASE, {"seed": [0, 1], "train.optimizer.lr": [0.1, 0.01, 0.001]})
    by_point = lambda ts: {json.dumps(t.assignment, sort_keys=True): t.trial_id for t in ts}  # noqa: E731
    assert by_point(reordered) == by_point(trials)
    grown = expand_grid(BASE, {"train.optimizer.lr": [0.1, 0.01, 0.001], "seed": [0, 1, 2]})
    assert set(ids) < {t.trial_id for t in grown}


def test_expand_grid_names_clashing_leaves_in_full_and_accepts_no_axes():
    base = {"a": {"lr": 1}, "b": {"lr": 2}}
    (trial,) = expand_grid(base, {"a.lr": [3], "b.lr": [4]})
    assert trial.name == "a.lr=3,b.lr=4" and trial.params == {"a": {"lr": 3}, "b": {"lr": 4}}
    (only,) = expand_grid(base, {})
    assert only.name == "base" and only.params == base


def test_set_dotted_creates_a_leaf_but_never_a_parent():
    config = {"train": {"optimizer": {"lr": 0.1}}}
    set_dotted(config, "train.optimizer.weight_decay", 1e-4)
    assert config["train"]["optimizer"] == {"lr": 0.1, "weight_decay": 1e-4}
    with pytest.raises(ConfigError, match=r"grid axis 'train\.optimiser\.lr': 'train\.optimiser' does not exist.*"
                                          r"did you mean 'optimizer'"):
        set_dotted(config, "train.optimiser.lr", 0.01, what="grid axis")
    with pytest.raises(ConfigError, match=r"'train\.optimizer\.lr' holds a float, not a mapping"):
        set_dotted(config, "train.optimizer.lr.value", 0.01)


@pytest.mark.parametrize(("axes", "match"), [
    ({"modle.trunk": ["resnet18"]}, r"grid axis 'modle\.trunk': 'modle' does not exist"),
    ({"seed": []}, r"grid axis 'seed' must be a non-empty list"),
    ({"seed": "0,1"}, r"grid axis 'seed' must be a non-empty list"),
    ({"seed": [0, 1, 0]}, r"grid axis 'seed' lists the value 0 more than once"),
    ({"seed": [object()]}, r"grid axis 'seed': value <object.*not JSON-serialisable"),
    ({"train..lr": [1]}, r"grid axis key 'train\.\.lr' must be a dotted config path"),
])
def test_expand_grid_rejects_bad_axes_naming_the_key(axes, match):
    with pytest.raises(ConfigError, match=match):
        expand_grid(BASE, axes)


def test_expand_grid_wants_a_config_dict():
    with pytest.raises(ConfigError, match=r"base config must be a dict .*cfg\.model_dump\(\).*got list"):
        expand_grid([("seed", 0)], {"seed": [1]})


# --- run_grid, sequential ---------------------------------------------------------------------

def test_sequential_run_writes_results_and_markers(tmp_path):
    trials = expand_grid(_base(tmp_path), {"train.optimizer.lr": [0.1, 0.01], "seed": [0, 1]})
    records = run_grid(trials, score_trial, tmp_path / "grid", progress=False)
    assert [r["trial_id"] for r in records] == [t.trial_id for t in trials]
    assert {r["status"] for r in records} == {"done"} and all(r["error"] is None for r in records)
    assert _scores(records) == {"lr=0.1,seed=0": 10.0, "lr=0.1,seed=1": 11.0, "lr=0.01,seed=0": 1.0, "lr=0.01,seed=1": 2.0}
    for t, r in zip(trials, records):
        directory = tmp_path / "grid" / "trials" / t.trial_id
        assert r["trial_dir"] == str(directory.resolve())
        assert json.loads((directory / "result.json").read_text()) == r["result"]
        assert json.loads((directory / "params.json").read_text()) == t.params
        assert (directory / "artefact.txt").exists() and not (directory / "error.txt").exists()
        assert r["result"]["threads"] == 1 and r["result"]["pid"] == os.getpid()


def test_rerun_skips_finished_trials_and_returns_stored_results(tmp_path):
    trials = expand_grid(_base(tmp_path), {"train.optimizer.lr": [0.1, 0.01], "seed": [0, 1]})
    first = run_grid(trials, score_trial, tmp_path / "grid", progress=False)
    second = run_grid(trials, score_trial, tmp_path / "grid", progress=False)
    assert len(_calls(tmp_path)) == 4                       # nothing ran the second time
    assert {r["status"] for r in second} == {"cached"}
    assert [r["result"] for r in second] == [r["result"] for r in first]
    # A grown grid runs only its new configurations.
    grown = expand_grid(_base(tmp_path), {"train.optimizer.lr": [0.1, 0.01], "seed": [0, 1, 2]})
    third = run_grid(grown, score_trial, tmp_path / "grid", progress=False)
    assert len(_calls(tmp_path)) == 6
    assert [r["status"] for r in third].count("done") == 2


def test_failing_trial_is_listed_with_its_error_and_retried(tmp_path, caplog):
    flag = tmp_path / "fail.flag"
    flag.touch()
    trials = expand_grid(_base(tmp_path, fail_flag=str(flag)), {"train.optimizer.lr": [0.1, 0.01], "seed": [0, 1]})
    with caplog.at_level(logging.WARNING, logger="medmtl.execution"):
        records = run_grid(trials, flaky_trial, tmp_path / "grid", progress=False)
    failed = [r for r in records if r["status"] == "failed"]
    assert [r["name"] for r in failed] == ["lr=0.1,seed=1", "lr=0.01,seed=1"]
    assert all("RuntimeError: diverged at lr=" in r["error"] and r["result"] is None for r in failed)
    assert "RuntimeError: diverged at lr=0.01" in (Path(failed[1]["trial_dir"]) / "error.txt").read_text()
    assert not (Path(failed[0]["trial_dir"]) / "result.json").exists()
    assert "2 of 4 trials failed" in caplog.text and "lr=0.01,seed=1: RuntimeError: diverged at lr=0.01" in caplog.text

    flag.unlink()
    again = run_grid(trials, flaky_trial, tmp_path / "grid", progress=False)
    assert [r["status"] for r in again] == ["cached", "done", "cached", "done"]
    assert len(_calls(tmp_path)) == 4                       # 2 the first time, only the 2 retried now
    assert not any((Path(r["trial_dir"]) / "error.txt").exists() for r in again)


def test_crash_mid_grid_then_rerun_completes_only_the_missing_trials(tmp_path):
    trials = expand_grid(_base(tmp_path), {"train.optimizer.lr": [0.1, 0.01], "seed": [0, 1]})
    with pytest.raises(KeyboardInterrupt):
        run_grid(trials, crashing_trial, tmp_path / "grid", progress=False)
    finished = {p.parent.name for p in (tmp_path / "grid" / "trials").glob("*/result.json")}
    assert finished == {t.trial_id for t in trials[:2]}
    records = run_grid(trials, score_trial, tmp_path / "grid", progress=False)
    assert [r["status"] for r in records] == ["cached", "cached", "done", "done"]
    assert _calls(tmp_path) == [t.trial_id for t in trials]   # every trial ran exactly once


def test_a_result_that_is_not_a_dict_fails_the_trial(tmp_path):
    trials = expand_grid(_base(tmp_path), {"seed": [3]})
    (record,) = run_grid(trials, listed_result_trial, tmp_path / "grid", progress=False)
    assert record["status"] == "failed" and "must return a dict of results; it returned list" in record["error"]


def test_a_finished_trial_with_another_base_config_is_refused(tmp_path):
    run_grid(expand_grid(_base(tmp_path), {"seed": [0]}), score_trial, tmp_path / "grid", progress=False)
    changed = _base(tmp_path)
    changed["train"] = {**changed["train"], "epochs": 5}
    with pytest.raises(ConfigError, match=r"trial 'seed=0' .* with another config \(differs at \['train\.epochs'\]\)"):
        run_grid(expand_grid(changed, {"seed": [0]}), score_trial, tmp_path / "grid", progress=False)


@pytest.mark.parametrize(("options", "match"), [
    ({"gpus_per_trial": -1}, r"gpus_per_trial=-1 must be a number >= 0"),
    ({"gpus_per_trial": 1.5}, r"gpus_per_trial=1\.5 must be .* a whole number of GPUs"),
    ({"workers": 0}, r"workers=0 must be a positive integer"),
    ({"cpus_per_trial": 1.5}, r"cpus_per_trial=1\.5 must be a positive integer"),
    ({"ray_address": ""}, r"ray_address='' must be a Ray address"),
])
def test_bad_runner_options_name_the_option(tmp_path, options, match):
    with pytest.raises(ConfigError, match=match):
        run_grid(expand_grid(_base(tmp_path), {"seed": [0]}), score_trial, tmp_path / "grid", progress=False, **options)


def test_repeated_trials_are_refused(tmp_path):
    (trial,) = expand_grid(_base(tmp_path), {"seed": [0]})
    with pytest.raises(ConfigError, match=r"share the id .* pass each configuration once"):
        run_grid([trial, trial], score_trial, tmp_path / "grid", progress=False)


# --- run_grid on Ray Tune (one test: starting Ray takes 10-20 s on two cores) ------------------

def test_ray_workers_run_trials_concurrently_resume_and_match_sequential(tmp_path):
    axes = {"train.optimizer.lr": [0.1, 0.01], "seed": [0, 1]}
    sequential = run_grid(expand_grid(_base(tmp_path / "seq"), axes), score_trial, tmp_path / "seq", progress=False)

    trials = expand_grid(_base(tmp_path, sleep=1.5), axes)
    run_grid(trials[:1], score_trial, tmp_path / "grid", progress=False)    # finished before the Ray run
    records = run_grid(trials, score_trial, tmp_path / "grid", workers=2, progress=False)

    assert [r["status"] for r in records] == ["cached", "done", "done", "done"]
    assert sorted(_calls(tmp_path)) == sorted(t.trial_id for t in trials)     # each trial ran once
    assert _scores(records) == _scores(sequential)
    ray_runs = [r["result"] for r in records[1:]]
    assert all(r["pid"] != os.getpid() and r["threads"] == 1 for r in ray_runs)
    spans = sorted((r["start"], r["end"]) for r in ray_runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans   # two at a time
    assert (tmp_path / "grid" / "ray").is_dir()
    assert all((Path(r["trial_dir"]) / "artefact.txt").exists() for r in records)


def test_ray_trials_reserve_their_share_of_a_gpu(tmp_path):
    """Two trials at ``gpus_per_trial=0.5`` on a Ray instance with one (logical) GPU: each is given
    GPU 0 and sees it, and they share it at the same time. A trial that reserves none sees none."""
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        shared = run_grid(expand_grid(_base(tmp_path, sleep=2.0), {"seed": [0, 1]}), gpu_probe_trial,
                          tmp_path / "half", workers=2, gpus_per_trial=0.5, progress=False)
        none = run_grid(expand_grid(_base(tmp_path), {"seed": [0]}), gpu_probe_trial, tmp_path / "none",
                        workers=2, gpus_per_trial=0, progress=False)
    finally:
        ray.shutdown()
    assert [r["status"] for r in shared] == ["done", "done"]
    assert all(r["result"]["gpu_ids"] == ["0"] and r["result"]["visible"] == "0" for r in shared)
    ends = sorted(r["result"]["end"] for r in shared)
    assert ends[1] - ends[0] < 2.0                       # both held half of the GPU at once (2 s sleeps)
    assert none[0]["result"]["gpu_ids"] == [] and not none[0]["result"]["visible"]
