"""DDP on the CPU (gloo, two processes): the options a one-process test never reaches.

One launch of ``tests/ddp_worker.py`` runs every job below in one process group (each launch costs
seconds of start-up); each rank leaves the indices it trained on and its weights. The loop itself
stops a run whose ranks' weights drift apart (``Trainer._check_ranks_agree``), so a job that
finishes had equal ranks at every epoch's end; the test checks the final weights too.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medmtl.config import parse_config
from medmtl.data.samplers import create_sampler
from medmtl.engine.loop import RankSlice, Trainer
from medmtl.mtl.weightings import WEIGHTINGS
from tests.conftest import REPO, need_data

TASKS = [
    {"name": "breastmnist", "kind": "binary", "classes": ["malignant", "benign_or_normal"], "target": "label",
     "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/breastmnist.npz"},
     "image": {"size": 28, "mode": "L"}, "split": {"method": "official"}},
    {"name": "retinamnist", "kind": "ordinal", "classes": ["0", "1", "2", "3", "4"], "target": "label",
     "role": "auxiliary", "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/retinamnist.npz"},
     "image": {"size": 28, "mode": "RGB"}, "split": {"method": "official"}},
]
# weightings DDP refuses (they take per-task gradients outside its all-reduce): tested to be refused elsewhere
DDP_WEIGHTINGS = [n for n in WEIGHTINGS.list() if not WEIGHTINGS.meta(n).needs_per_task_grads]


def _raw(cache, run_dir, *, tasks=2, limit=40, batch=8, devices=2, **train) -> dict:
    return {"name": "ddp", "seed": 5, "cache_dir": str(cache), "run_dir": str(run_dir),
            "tasks": copy.deepcopy(TASKS[:tasks]), "leakage": {"policy": "off"},
            "data": {"batch_size": batch, "augmentation": "none", "size": 28, "limit_train": limit, "limit_eval": 24},
            "model": {"trunk": {"name": "test_tiny"}},
            "train": {"epochs": 1, "optimizer": {"name": "sgd", "lr": 0.05}, "mlflow": False, "accelerator": "cpu",
                      "devices": devices, **train}}


def _jobs(cache, root) -> dict[str, dict]:
    jobs = {
        # per-head factors from each rank's own counts would differ between the ranks
        "grad_rescale": _raw(cache, root / "grad_rescale", epochs=2, grad_rescale=True),
        # statistics from each rank's own batches would differ; the first epoch must not skip them
        "bn_adapt": _raw(cache, root / "bn_adapt", bn_adapt_batches=2),
        # 65 images in batches of 32: 33 and 32 per rank would be 2 batches against 1 (a hang)
        "uneven": _raw(cache, root / "uneven", tasks=1, limit=65, batch=32),
        # batches of 4 from two tasks: a trunk without rows in some steps, still in the penalty
        "soft": _raw(cache, root / "soft", batch=4, epochs=2),
        # one global batch of 16 as two ranks' batches of 8, against one process below
        "same": _raw(cache, root / "same", tasks=1, limit=64, batch=8),
    }
    jobs["soft"]["model"].update(sharing="soft", soft_weight=0.1)
    jobs["bn_adapt"]["data"]["sampler"] = "proportional"     # each image once per epoch: a skip shows
    for name in DDP_WEIGHTINGS:
        kwargs = {"fixed": {"weights": {"breastmnist": 1.0, "retinamnist": 0.5}}}.get(name, {})
        jobs[f"weighting_{name}"] = _raw(cache, root / f"weighting_{name}", batch=4,
                                         weighting={"name": name, "kwargs": kwargs})
    return jobs


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, shared_cache):
    """Every job run under DDP in one launch: {job: [rank0 record, rank1 record]} (or the error)."""
    need_data("medmnist")
    root = tmp_path_factory.mktemp("ddp")
    jobs = _jobs(shared_cache, root)
    path = root / "jobs.json"
    path.write_text(json.dumps([{"config": raw, "run_dir": raw["run_dir"]} for raw in jobs.values()]))
    env = {**os.environ, "MEDMTL_DATA": os.environ.get("MEDMTL_DATA", str(REPO.parent / "shared" / "datasets"))}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "ddp_worker.py"), str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)          # a rank waiting in an all-reduce never returns
        out, _ = proc.communicate()
    runs = {}
    for name, raw in jobs.items():
        d = root / name
        ranks = [torch.load(d / f"rank{k}.pt", weights_only=False) for k in range(2) if (d / f"rank{k}.pt").is_file()]
        error = (d / "error.txt").read_text() if (d / "error.txt").is_file() else None
        runs[name] = {"ranks": ranks, "error": error, "config": raw, "log": out[-3000:]}
    return runs


def _finished(run) -> list[dict]:
    assert run["error"] is None, run["error"][-2000:]
    assert len(run["ranks"]) == 2, f"not every rank finished (a hang?):\n{run['log']}"
    return run["ranks"]


def _equal_weights(ranks) -> bool:
    a, b = (r["model"] for r in ranks)
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("job", ["grad_rescale", "bn_adapt", "uneven", "soft"])
def test_ddp_option_trains_with_equal_ranks(ddp_runs, job):
    ranks = _finished(ddp_runs[job])
    assert [r["world"] for r in ranks] == [2, 2]
    assert _equal_weights(ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0


def test_bn_adaptation_under_ddp_skips_no_batch_of_the_first_epoch(ddp_runs):
    """Adaptation draws the first batches; the first epoch still trains on every image of its order."""
    ranks = _finished(ddp_runs["bn_adapt"])
    cfg = parse_config(ddp_runs["bn_adapt"]["config"])
    n = 80                                                  # 40 images of each of two tasks
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == sorted(range(n))
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == n // 2
    assert cfg.train.bn_adapt_batches == 2


def test_uneven_epoch_is_padded_to_equal_batches_per_rank(ddp_runs):
    ranks = _finished(ddp_runs["uneven"])
    assert [len(r["seen"]) for r in ranks] == [33, 33] and [r["steps"] for r in ranks] == [2, 2]
    assert set(ranks[0]["seen"]) | set(ranks[1]["seen"]) == set(range(65))   # every image, one repeated


@pytest.mark.parametrize("name", DDP_WEIGHTINGS)
def test_every_weighting_ddp_allows_trains_routed_heads_with_equal_ranks(ddp_runs, name):
    ranks = _finished(ddp_runs[f"weighting_{name}"])
    assert _equal_weights(ranks) and ranks[0]["steps"] == ranks[1]["steps"] == 10   # 80 images, 4 per rank-step


def test_two_processes_reach_the_one_process_weights(ddp_runs, shared_cache, tmp_path):
    """Two ranks with batches of 8 take the same steps as one process with batches of 16 (the ranks'
    halves of each global batch, gradients averaged): the weights agree up to what batch norm's
    per-rank statistics change."""
    from medmtl.data.pipeline import prepare

    ranks = _finished(ddp_runs["same"])
    raw = _raw(shared_cache, tmp_path / "one", tasks=1, limit=64, batch=16, devices=1)
    cfg = parse_config(raw)
    trainer = Trainer(cfg, prepare(cfg, progress=False, write_splits=False), tmp_path / "one", progress=False)
    start = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    trainer.fit()
    one, two = trainer.net.state_dict(), ranks[0]["model"]
    assert trainer.step == ranks[0]["steps"] == 4
    keys = [k for k in one if one[k].is_floating_point() and "running" not in k]
    moved = torch.cat([(one[k] - start[k]).flatten() for k in keys])
    apart = torch.cat([(one[k] - two[k]).flatten() for k in keys])
    other = torch.cat([(two[k] - start[k]).flatten() for k in keys])
    assert moved.norm() > 0
    cosine = float(moved @ other / (moved.norm() * other.norm()))
    assert cosine > 0.95 and float(apart.norm() / moved.norm()) < 0.3, (cosine, float(apart.norm() / moved.norm()))


@pytest.mark.parametrize("n, world", [(65, 2), (64, 2), (7, 3), (1, 2), (10, 4)])
def test_rank_slices_are_equal_disjoint_until_padding_and_cover_the_epoch(n, world):
    sampler = create_sampler("proportional", np.zeros(n, dtype=int), seed=1)
    order = list(sampler)
    slices = [list(RankSlice(sampler, r, world)) for r in range(world)]
    per = -(-n // world)
    assert [len(s) for s in slices] == [per] * world == [len(RankSlice(sampler, r, world)) for r in range(world)]
    flat = [i for s in slices for i in s]
    assert sorted(set(flat)) == sorted(order) and len(flat) == per * world
    assert all(s[:len(order[r::world])] == order[r::world] for r, s in enumerate(slices))


def test_run_with_devices_trains_each_arm_on_two_processes_and_scores_once(tmp_path, shared_cache):
    """``medmtl run --devices 2``: only each arm's training runs on two processes; the arms, the
    scoring, the results and the report happen once, in the command's own process."""
    import pandas as pd
    import yaml

    need_data("medmnist")
    raw = _raw(shared_cache, tmp_path / "exp", batch=8, devices=1)
    raw["experiment"] = {"main_task": "breastmnist", "seeds": [0], "tta": False,
                         "arms": [{"name": "stl", "strategy": "stl"},
                                  {"name": "mtl", "strategy": "mtl", "tasks": ["breastmnist", "retinamnist"]}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "MEDMTL_DATA": os.environ.get("MEDMTL_DATA", str(REPO.parent / "shared" / "datasets"))}
    out = subprocess.run([sys.executable, "-m", "medmtl.cli", "run", str(path), "--devices", "2", "--no-progress"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stdout + out.stderr
    assert out.stdout.count("results: ") == 1
    pred = pd.read_csv(tmp_path / "exp" / "results" / "predictions.csv")
    assert set(pred["arm"]) == {"stl", "mtl"} and not pred.duplicated(["arm", "seed", "split", "id"]).any()
    for arm in ("stl", "mtl"):
        saved = yaml.safe_load((tmp_path / "exp" / "arms" / arm / "seed0" / "config.yaml").read_text())
        assert saved["train"]["devices"] == 2
        assert json.loads((tmp_path / "exp" / "arms" / arm / "seed0" / "metrics.json").read_text())["processes"] == 2
        assert len((tmp_path / "exp" / "arms" / arm / "seed0" / "history.csv").read_text().splitlines()) == 2
    assert (tmp_path / "exp" / "report" / "report.html").is_file()


def test_a_ddp_checkpoint_keeps_every_ranks_random_state(ddp_runs):
    """rank 0 alone writes last.ckpt, with every rank's generator states in rank order, so that a
    resumed rank continues its own draws (on a GPU: its own device's), not rank 0's."""
    from medmtl.engine import checkpoint as ckpt

    _finished(ddp_runs["grad_rescale"])
    state = ckpt.load(Path(ddp_runs["grad_rescale"]["config"]["run_dir"]) / "checkpoints" / "last.ckpt")
    assert len(state["rng_ranks"]) == 2 and state["rng"] is not None
    assert all(set(r) == {"torch", "numpy", "python", "cuda"} for r in state["rng_ranks"])
    assert torch.equal(state["rng"]["torch"], state["rng_ranks"][0]["torch"])
