"""`make bench`: speed goals measured as ratios within one run, printed as `name: value`.

cache_second_vs_first: a pass over every PCam image (read the folders, decode/resize, hash and
dedupe, then touch every image) with an empty cache, divided by the same pass on the warm cache.
Goal >= 10.

trainer_vs_bare: medmtl's multi-task training step throughput (Fabric, routing, per-task losses,
weighting, finiteness checks) over a bare PyTorch loop with the same trunk, heads, batches and
optimiser, one forward per batch. Both consume the same pre-collated batches of cached data;
the two loops alternate over several rounds and the medians are compared. Goal >= 0.95.

grid_2_vs_1: wall time of a grid of equal CPU-bound trials (a small MLP trained for a fixed
number of steps on one torch thread) run sequentially by one worker, over the same grid on Ray Tune
with two workers. Both times are whole ``run_grid`` calls, so the Ray side includes starting and
stopping Ray. Goal >= 1.8.

time_to_quality: wall time of MedMNIST v2's ResNet-18 (28) recipe on BreastMNIST (100 epochs) through
medmtl over the same recipe as a bare hand-written loop, same seed, with both test AUCs
(``benchmarks/time_to_quality.py``; about 25 minutes on 2 CPU cores). No goal yet: it is measured.

pipeline_vs_model: images/s of the input pipeline alone (cached decode + s0 augmentation +
collation, with the loader workers of the default config) over images/s of training steps on
pre-loaded batches. Goal >= 3.

layout_<trunk>: the time of a training step with the model in channels-last memory order over the
same step in contiguous order (``train.channels_last``), per trunk at its study's size, the two
alternating step by step. Below 1 means channels-last is faster; it is on by default because it is.

Every part's value, with its details, the commit, the date and the machine, is merged into
``experiments/results/bench.json`` (``--out``), from which the README's table is rendered.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from medmtl.config import parse_config  # noqa: E402
from medmtl.data.pipeline import prepare  # noqa: E402


def pcam_pass(cache_dir: str, run_dir: str) -> float:
    cfg = parse_config({
        "name": "bench", "cache_dir": cache_dir, "run_dir": run_dir,
        "leakage": {"policy": "off"},
        "tasks": [{"name": "pcam", "kind": "binary", "classes": ["0", "1"], "target": "class",
                   "reader": {"name": "folder", "root": "${MEDMTL_DATA}/pcam"},
                   "image": {"size": 96, "mode": "RGB"}, "split": {"method": "official"}}],
    })
    start = time.perf_counter()
    data = prepare(cfg, progress=False, write_splits=False)
    cached = data.source_of("pcam").cached
    checksum = 0
    for i in range(len(cached)):          # every image read once, as an epoch would
        checksum += int(cached.image(i)[48, 48, 0])
    elapsed = time.perf_counter() - start
    print(f"# pcam pass: {len(cached)} images, {elapsed:.2f} s, decoded {cached.decoded}", file=sys.stderr)
    return elapsed


def _train_config(run_dir: str):
    task = lambda name, path, mode, kind, classes: {  # noqa: E731
        "name": name, "kind": kind, "classes": classes, "target": "label",
        "reader": {"name": "medmnist", "path": f"${{MEDMTL_DATA}}/medmnist/{path}"},
        "image": {"size": 28, "mode": mode}, "split": {"method": "official"}}
    return parse_config({
        "name": "bench_train", "seed": 0, "cache_dir": str(REPO / "runs" / "cache"), "run_dir": run_dir,
        "leakage": {"policy": "off"},
        "tasks": [task("breastmnist", "breastmnist.npz", "L", "binary", ["malignant", "normal_or_benign"]),
                  task("retinamnist", "retinamnist.npz", "RGB", "ordinal", ["0", "1", "2", "3", "4"])],
        "data": {"batch_size": 64, "size": 32, "augmentation": "s0"},
        "model": {"trunk": {"name": "resnext29", "kwargs": {"width": 0.25}}},
        "train": {"epochs": 1, "optimizer": {"lr": 0.01}, "mlflow": False},
    })


def _bare_step_fn(trainer):
    """The same trunk and heads, trained by the plainest loop: forward, masked CE per task, step."""
    import copy

    import torch
    import torch.nn.functional as F

    trunk = copy.deepcopy(trainer.net.trunk)
    heads = copy.deepcopy(trainer.net.heads)
    params = list(trunk.parameters()) + list(heads.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    tasks = list(trainer.specs)

    def step(batch):
        trunk.train(); heads.train()
        feats = trunk(batch["image"])
        total, n = 0.0, 0
        for t in tasks:
            rows = batch["label_mask"][t]
            if rows.any():
                from medmtl.models.heads import Features

                f = Features(feats[rows], None, tuple(batch["image"].shape[-2:]))
                logits = heads[trainer.net.head_of[t]](f)[t]
                total = total + F.cross_entropy(logits, batch["labels"][t][rows], reduction="sum")
                n += int(rows.sum())
        opt.zero_grad(set_to_none=True)
        (total / n).backward()
        opt.step()
    return step


def train_ratios(rounds: int = 9, steps: int = 6) -> tuple[float, float]:
    import statistics

    import torch

    from medmtl.data.pipeline import prepare
    from medmtl.engine.loop import Trainer

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _train_config(f"{tmp}/run")
        data = prepare(cfg, progress=False, write_splits=False)
        trainer = Trainer(cfg, data, f"{tmp}/run", progress=False)
        loader_iter = iter(trainer.train_loader)
        start = time.perf_counter()
        batches = [next(loader_iter) for _ in range(steps * 2)]
        pipeline_ips = len(batches) * cfg.data.batch_size / (time.perf_counter() - start)
        bare = _bare_step_fn(trainer)
        for b in batches[:2]:   # warm up both loops (allocator, kernels)
            trainer.train_step(b)
            bare(b)
        # interleaved step by step on the same batch, so that a slow spell of the machine (other
        # processes, frequency changes) hits both loops alike; the ratio is taken per round and
        # the median round reported
        ratios, t_medmtl = [], []
        for _ in range(rounds):
            med_round, bare_round = 0.0, 0.0
            for b in batches[:steps]:
                start = time.perf_counter()
                trainer.train_step(b)
                med_round += time.perf_counter() - start
                start = time.perf_counter()
                bare(b)
                bare_round += time.perf_counter() - start
            ratios.append(bare_round / med_round)
            t_medmtl.append(med_round)
    med = statistics.median(t_medmtl)
    model_ips = steps * cfg.data.batch_size / med
    print(f"# training step: medmtl {med / steps * 1000:.1f} ms; per-round bare/medmtl ratios "
          f"{', '.join(f'{r:.3f}' for r in ratios)}; pipeline {pipeline_ips:.0f} img/s, model {model_ips:.0f} img/s",
          file=sys.stderr)
    return statistics.median(ratios), pipeline_ips / model_ips


def grid_trial(params: dict, trial_dir: Path) -> dict:
    """One equal, CPU-bound grid trial: a small MLP trained for a fixed number of steps."""
    import torch

    torch.manual_seed(params["seed"])
    net = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(128, 256), torch.randint(0, 10, (128,))
    for _ in range(params["steps"]):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"loss": loss.item()}


def grid_ratio(n_trials: int = 8, steps: int = 48000) -> float:
    """Sequential grid time over Ray Tune time with two workers, each run_grid call timed whole.

    Both sides give each trial one torch thread (cpus_per_trial=1), so one trial does the same work
    at the same speed in either; only the number running at once differs. The trials are long
    (~60 s each on 2 cores) because Ray's fixed cost (~12 s to start Ray, Tune and the trial
    processes, and to stop them) must stay small next to the grid.
    """
    from medmtl.execution import expand_grid, run_grid

    trials = expand_grid({"seed": 0, "steps": steps}, {"seed": list(range(n_trials))})
    elapsed, losses = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            start = time.perf_counter()
            records = run_grid(trials, grid_trial, f"{tmp}/workers{workers}", workers=workers, progress=False)
            elapsed[workers] = time.perf_counter() - start
            failed = [r["name"] for r in records if r["status"] != "done"]
            if failed:
                raise RuntimeError(f"grid benchmark: trials {failed} failed with workers={workers}; "
                                   "their errors are logged above")
            losses[workers] = [r["result"]["loss"] for r in records]
    print(f"# grid: {n_trials} trials x {steps} steps; 1 worker {elapsed[1]:.1f} s, 2 workers on Ray "
          f"{elapsed[2]:.1f} s (start-up included); same losses: {losses[1] == losses[2]}", file=sys.stderr)
    return elapsed[1] / elapsed[2]


LAYOUT_TRUNKS = {   # trunk -> (create_trunk options, image size, batch): each at its study's setting
    "resnext29_w0.125": ({"name": "resnext29", "width": 0.125}, 32, 64),
    "efficientnet_lite0": ({"name": "efficientnet_lite0"}, 64, 64),
    "resnet18_small": ({"name": "resnet18", "small_input": True}, 28, 128),
}


def layout_ratios(rounds: int = 5, steps: int = 3) -> dict[str, dict]:
    """Per trunk, channels-last step time over contiguous step time (median of interleaved rounds)."""
    import copy
    import statistics

    import torch

    from medmtl.models.trunks import create_trunk

    torch.set_num_threads(os.cpu_count() or 1)
    out = {}
    for key, (options, size, batch) in LAYOUT_TRUNKS.items():
        torch.manual_seed(0)
        options = dict(options)
        contiguous = create_trunk(options.pop("name"), in_chans=3, **options)
        nets = {"contiguous": contiguous, "channels_last": copy.deepcopy(contiguous).to(memory_format=torch.channels_last)}
        opts = {k: torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for k, n in nets.items()}
        x = torch.randn(batch, 3, size, size)

        def step(k):
            start = time.perf_counter()
            opts[k].zero_grad(set_to_none=True)
            nets[k](x).float().square().mean().backward()
            opts[k].step()
            return time.perf_counter() - start

        for k in nets:              # warm-up: allocator and kernel choice
            step(k)
        ratios, times = [], {k: [] for k in nets}
        for _ in range(rounds):
            t = {k: 0.0 for k in nets}
            for _ in range(steps):
                for k in nets:
                    t[k] += step(k)
            ratios.append(t["channels_last"] / t["contiguous"])
            for k in nets:
                times[k].append(t[k] / steps)
        out[key] = {"value": round(statistics.median(ratios), 3), "size": size, "batch": batch,
                    "contiguous_ms": round(1000 * statistics.median(times["contiguous"]), 1),
                    "channels_last_ms": round(1000 * statistics.median(times["channels_last"]), 1),
                    "rounds": [round(r, 3) for r in ratios]}
        print(f"# layout {key}: contiguous {out[key]['contiguous_ms']} ms, channels-last "
              f"{out[key]['channels_last_ms']} ms per step (batch {batch}, {size} px)", file=sys.stderr)
    return out


PARTS = ("cache", "train", "grid", "layout", "ttq")


def _store(path: Path, records: dict) -> None:
    """Merge this run's parts into ``path`` (each part keeps the commit, date and machine it ran at)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from studies import git_commit, machine

    doc = json.loads(path.read_text()) if path.is_file() else {"what": "make bench (benchmarks/run.py)", "parts": {}}
    stamp = {"commit": git_commit(), "date": datetime.date.today().isoformat(), "machine": machine()}
    for part, values in records.items():
        doc["parts"][part] = {**stamp, "values": values}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"# stored in {path}", file=sys.stderr)


def main() -> None:
    """All ratios, or only the parts named on the command line; each stored in ``--out``."""
    os.environ.setdefault("MEDMTL_DATA", str(REPO.parent / "shared" / "datasets"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", help=f"some of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "bench.json",
                        help="results file the parts are merged into")
    parser.add_argument("--no-store", action="store_true", help="print only")
    args = parser.parse_args()
    parts = set(args.parts) or set(PARTS)
    unknown = parts - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown benchmark parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    records = {}
    if "cache" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            first = pcam_pass(f"{tmp}/cache", f"{tmp}/run")
            second = pcam_pass(f"{tmp}/cache", f"{tmp}/run")
        print(f"cache_second_vs_first: {first / second:.1f}")
        records["cache"] = {"cache_second_vs_first": {"value": round(first / second, 1), "goal": ">= 10",
                                                      "cold_seconds": round(first, 2), "warm_seconds": round(second, 2)}}
    if "train" in parts:
        trainer_vs_bare, pipeline_vs_model = train_ratios()
        print(f"trainer_vs_bare: {trainer_vs_bare:.2f}")
        print(f"pipeline_vs_model: {pipeline_vs_model:.1f}")
        records["train"] = {"trainer_vs_bare": {"value": round(trainer_vs_bare, 2), "goal": ">= 0.95"},
                            "pipeline_vs_model": {"value": round(pipeline_vs_model, 1), "goal": ">= 3"}}
    if "grid" in parts:
        ratio = grid_ratio()
        print(f"grid_2_vs_1: {ratio:.2f}")
        records["grid"] = {"grid_2_vs_1": {"value": round(ratio, 2), "goal": ">= 1.8"}}
    if "layout" in parts:
        layout = layout_ratios()
        for key, r in layout.items():
            print(f"layout_{key}: {r['value']:.2f}")
        records["layout"] = {f"layout_{k}": {**r, "goal": "< 1 to be on by default"} for k, r in layout.items()}
    if "ttq" in parts:
        from time_to_quality import time_to_quality

        r = time_to_quality()
        print(f"# time_to_quality: medmtl {r['medmtl_seconds']:.1f} s, test AUC {r['medmtl_test_auc']:.3f}; bare loop "
              f"{r['bare_seconds']:.1f} s, test AUC {r['bare_test_auc']:.3f}", file=sys.stderr)
        print(f"time_to_quality: {r['ratio']:.2f}")
        records["ttq"] = {"time_to_quality": {"value": round(r["ratio"], 2), "goal": "measured",
                                              **{k: v for k, v in r.items() if k != "ratio"}}}
    if not args.no_store:
        _store(args.out, records)


if __name__ == "__main__":
    main()
