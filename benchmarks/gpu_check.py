"""The checks that need a CUDA GPU, prepared so that a short lease of one suffices.

Two steps, because the GPU machine of this workplace reaches no network and gets only the repo:

1. Here (any machine with PyPI):  ``python benchmarks/gpu_check.py bundle``
   writes ``.gpu/`` (git-ignored; name it in the device call's ``carry``): wheels (CPython 3.12,
   manylinux) of the dependencies the GPU image lacks, and the MedMNIST files the engine tests
   read (11 MiB here).
2. There (repo root, ``.gpu`` carried):  ``python3 benchmarks/gpu_check.py check --out DIR``
   installs the wheels into /tmp/site and runs, on the GPU:
   - the engine and model tests (``accelerator: auto`` picks CUDA): fp16 loss scaling equal to the
     float32 step, overflow skipped and the loss scale resumed, bf16, same seed -> same numbers
     and kill -9 + ``--resume`` -> same weights (deterministic kernels), routing, warm-up;
   - experiments/mtl_medmnist_pcam.yaml without PCam at 32-true, 16-mixed and bf16-mixed (time,
     validation AUC);
   - every head kind and sharing mode at the three precisions: study 4's BUSI tasks
     (classification, segmentation, detection) with separate heads and with the feature-transfer
     head, hard and soft sharing, a short training each (time, validation metrics, or the error);
   - same seed, same numbers: one of those trainings twice, its weights compared bit for bit;
   - a Ray grid of two trials sharing the GPU (``gpus_per_trial=0.5``), where Ray is installed;
   - per study, the step time of every distinct model its full protocol trains (the real network at
     the config's batch, image size and precision, a few warm-up steps then ``--timed-steps``), and
     the full protocol's expected time on this GPU: steps x measured step time plus forward calls x
     measured forward time (scoring, validation, feature extraction). The trainings, steps and
     forward calls come from ``experiments/results/gpu-estimate.json`` (the GPU machine lacks most
     datasets), written by ``estimate``.
   Logs and ``gpu_check.json`` land in DIR.

``check --no-install --dry-run`` runs the new parts on whatever device there is, in a few steps of
a tiny trunk and without the test suite (tests/test_benchmarks.py runs it on the CPU, with
``MEDMTL_GPU_CHECK_CACHE`` naming its decode cache; default: DIR/cache).

A plain machine with CUDA and ``pip install -e .[test]`` done runs step 2 with ``--no-install``.

Without a GPU:  ``python benchmarks/gpu_check.py estimate --out experiments/results/gpu-estimate.json``
counts, for each study in its full setting (the config as written, no profile), the trainings and
optimiser steps its protocol runs and the forward-only passes around them
(``benchmarks/study_cost.py``; steps per epoch from the prepared data, so ``MEDMTL_DATA`` must hold
the datasets), the FLOPs of one step of each distinct model (torch's FlopCounterMode), and an
expected one-GPU time labelled ``estimate`` from the constants below. :func:`render_estimate` makes
its README table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from studies import RESULTS, git_commit, machine  # noqa: E402  (stdlib only: runs before the wheels install)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".gpu"
# what medmtl's import path and the engine tests need beyond the GPU image's packages (torch,
# lightning, timm, typer, pandas, scikit-learn, scipy, pillow, pyyaml, tqdm, pytest are there)
WHEELS = ["pydantic==2.14.4", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
          "imagehash==4.3.2", "pywavelets", "torchjd==0.18.0"]
DATA = ["medmnist/breastmnist.npz", "medmnist/retinamnist.npz", "busi"]    # BUSI: 27 MiB, masks and boxes
TESTS = ["tests/test_engine.py", "tests/test_multitask_model.py"]
DESELECT = "not mlflow and not busi_batch"   # mlflow is not bundled; BUSI does not travel
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def bundle(data_root: Path) -> None:
    wheels = BUNDLE / "whl"
    shutil.rmtree(BUNDLE, ignore_errors=True)
    wheels.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS],
           "-d", str(wheels), *_resolved(WHEELS)]
    subprocess.run(cmd, check=True)
    for rel in DATA:
        src = data_root / rel
        if not src.exists():
            raise SystemExit(f"{src} not found: set MEDMTL_DATA to the shared datasets")
        (BUNDLE / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, BUNDLE / "data" / rel)
        else:
            shutil.copy2(src, BUNDLE / "data" / rel)
    size = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    print(f"{BUNDLE}: {len(list(wheels.iterdir()))} wheels and {len(DATA)} data files, {size / 2**20:.1f} MiB")


def _resolved(specs: list[str]) -> list[str]:
    """Pin unpinned names to the version installed here (the versions the tests ran with)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for spec in specs:
        if "==" in spec:
            out.append(spec)
            continue
        try:
            out.append(f"{spec}=={version(spec)}")
        except PackageNotFoundError:
            out.append(spec)
    return out


def _env(install: bool) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    paths = [str(REPO / "src")]
    if install:
        site = Path("/tmp/site")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site),
                        *map(str, sorted((BUNDLE / "whl").glob("*.whl")))], check=True)
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if (BUNDLE / "data").is_dir():
        env["MEDMTL_DATA"] = str(BUNDLE / "data")
    return env


def _train(precision: str, out: Path, epochs: int, steps: int) -> dict:
    """experiments/mtl_medmnist_pcam.yaml without PCam (its images do not travel), on the default
    accelerator at ``precision``; seconds and validation AUC."""
    import yaml

    from medmtl.config import parse_config
    from medmtl.data.pipeline import prepare
    from medmtl.engine.loop import fit

    raw = yaml.safe_load((REPO / "experiments" / "mtl_medmnist_pcam.yaml").read_text())
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] != "pcam"]
    raw.update(name=f"gpu-{precision}", cache_dir=str(out / "cache"), run_dir=str(out / precision))
    raw["train"].update(epochs=epochs, steps_per_epoch=steps, precision=precision, mlflow=False)
    cfg = parse_config(raw, "experiments/mtl_medmnist_pcam.yaml for the GPU check")
    data = prepare(cfg, progress=False)
    start = time.perf_counter()
    result = fit(cfg, data, cfg.run_dir, progress=False)
    return {"seconds": round(time.perf_counter() - start, 1),
            "val_auc": {t: round(float(m["auc"]), 4) for t, m in result.val_metrics.items()}}


PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
HEADS = {"separate": {}, "feature_transfer": {"ftmtl": {"name": "feature_transfer",
                                                        "tasks": ["busi_cls", "busi_seg", "busi_det"]}}}


def _busi_config(out: Path, steps: int, size: int, trunk: str | None = None):
    """Study 4's three BUSI tasks as one short training (random trunk: no weights travel); ``trunk``
    replaces the study's (the dry run's tiny one: bf16 convolutions are slow on a CPU without it)."""
    import yaml

    from medmtl.config import parse_config

    raw = yaml.safe_load((REPO / "experiments" / "s4-cls-det-seg.yaml").read_text())
    for key in ("experiment", "profiles"):
        raw.pop(key, None)
    raw.update(name="gpu-heads", cache_dir=os.environ.get("MEDMTL_GPU_CHECK_CACHE", str(out / "cache")),
               run_dir=str(out / "heads"))
    raw["model"]["trunk"]["pretrained"] = None
    if trunk:
        raw["model"]["trunk"]["name"] = trunk
    raw["data"].update(size=size, batch_size=8, limit_train=8 * steps, limit_eval=16, augmentation="none")
    raw["train"].update(epochs=1, steps_per_epoch=steps, mlflow=False, early_stopping={"patience": None})
    return parse_config(raw, "experiments/s4-cls-det-seg.yaml for the GPU check")


def _heads_matrix(out: Path, steps: int, size: int, trunk: str | None = None) -> dict:
    """{heads/sharing/precision: seconds and validation metrics, or the error}; then same-seed equality."""
    import torch

    from medmtl.config import override_config
    from medmtl.data.pipeline import prepare
    from medmtl.engine import checkpoint as ckpt
    from medmtl.engine.loop import fit

    base = _busi_config(out, steps, size, trunk)
    data = prepare(base, progress=False)
    results = {}
    for heads, spec in HEADS.items():
        for sharing in ("hard", "soft"):
            for precision in PRECISIONS:
                key = f"{heads}/{sharing}/{precision}"
                run = out / "heads" / key.replace("/", "-")
                cfg = override_config(base, {"model.heads": spec, "model.sharing": sharing,
                                             "train.precision": precision, "run_dir": str(run)}, key)
                start = time.perf_counter()
                try:
                    r = fit(cfg, data, run, progress=False)
                    results[key] = {"seconds": round(time.perf_counter() - start, 1),
                                    "val": {t: {m: round(float(v), 4) for m, v in ms.items()}
                                            for t, ms in r.val_metrics.items()}}
                except Exception as exc:      # one failing combination must not hide the others
                    results[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                print(key, json.dumps(results[key]), flush=True)
    twice = []
    for k in range(2):
        run = out / "heads" / f"same-seed-{k}"
        fit(override_config(base, {"run_dir": str(run)}, "same seed"), data, run, progress=False)
        twice.append(ckpt.load(run / "checkpoints" / "last.ckpt")["model"])
    same = all(torch.equal(twice[0][k], twice[1][k]) for k in twice[0])
    print("same seed, same weights:", same, flush=True)
    return {"matrix": results, "same_seed_same_weights": same}


def _ray_trial(params: dict, trial_dir: Path) -> dict:
    """One Ray trial: a short BUSI training on whatever device Ray let it see."""
    import torch

    from medmtl.config import override_config
    from medmtl.data.pipeline import prepare
    from medmtl.engine.loop import fit

    cfg = override_config(_busi_config(Path(params["out"]), params["steps"], params["size"], params["trunk"]),
                          {"run_dir": str(trial_dir / "run"), "seed": params["seed"]}, "ray trial")
    start = time.perf_counter()
    fit(cfg, prepare(cfg, progress=False, write_splits=False), trial_dir / "run", progress=False)
    return {"cuda": torch.cuda.is_available(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "start": start, "seconds": round(time.perf_counter() - start, 1)}


def _ray_grid(out: Path, steps: int, size: int, trunk: str | None = None) -> dict:
    try:
        import ray  # noqa: F401  (Ray is optional: its wheel is larger than what a device call carries)
    except ImportError:
        return {"skipped": "ray is not installed here"}
    import torch

    from medmtl.execution import expand_grid, run_grid

    gpus = 0.5 if torch.cuda.is_available() else 0
    trials = expand_grid({"out": str(out), "steps": steps, "size": size, "trunk": trunk, "seed": 0},
                         {"seed": [0, 1]})
    records = run_grid(trials, _ray_trial, out / "ray", workers=2, gpus_per_trial=gpus, progress=False)
    return {"gpus_per_trial": gpus, "trials": [{"status": r["status"], **(r["result"] or {}),
                                                **({"error": r["error"][-500:]} if r.get("error") else {})}
                                               for r in records]}


# -- full-protocol cost per study ------------------------------------------------------------------
STUDIES = ("s0-mtl-vs-tl", "s1-aux-tasks", "s2-pretrain-pool", "s3-multidomain", "s4-cls-det-seg")
ESTIMATE = RESULTS / "gpu-estimate.json"
METHOD = "FLOP estimate (no GPU measured)"
# The estimate's assumptions. Each training (and each batch of forward-only passes) takes the larger
# of its FLOPs over the sustained throughput and its steps (batches) times the overhead floor.
PEAK_TFLOPS = {"32-true": 494.7, "16-mixed": 989.4, "bf16-mixed": 989.4}
PEAK_WHY = ("NVIDIA H200 SXM datasheet, dense Tensor Core peaks: the sheet's TF32 989 and BF16/FP16 1,979 TFLOPS "
            "are with 2:4 sparsity, halved here; at 32-true cuDNN runs convolutions in TF32 (PyTorch's default)")
SUSTAINED_FRACTION = 0.05
FRACTION_WHY = ("assumed, not measured: depthwise (EfficientNet-Lite0) and grouped (ResNeXt-29) convolutions on "
                "1-32 px feature maps at batch 32-64 are memory- and launch-bound, far below tensor-core peak")
STEP_FLOOR_S = 0.020
STEP_FLOOR_WHY = ("eager PyTorch dispatches several hundred kernels per forward+backward+optimiser step of these "
                  "nets (about 10 us each from the host), and with data.num_workers 0 each batch is decoded and "
                  "augmented in the training process")
FORWARD_FLOOR_S = 0.005
FORWARD_FLOOR_WHY = ("a forward-only call (one batch, one TTA view) dispatches about a third of a training step's "
                     "kernels; its images come from the same in-process loader")
COUNTS_WHY = ("trainings and forward passes: the protocols' own expansion of the config (benchmarks/study_cost.py); "
              "steps per epoch: train.steps_per_epoch or the prepared training set's size over the batch size "
              "(MEDMTL_DATA); epochs as configured, so early stopping can only shorten them; FLOPs: torch's "
              "FlopCounterMode, one forward+backward of each distinct model at the config's batch and image size")
NOT_COUNTED = ("data preparation (decoding, duplicate and leakage search), the SVM fits (CPU), checkpoint writes "
               "and process start-up")


def _throughput(precision: str) -> float:
    return PEAK_TFLOPS[precision] * 1e12 * SUSTAINED_FRACTION


def estimate(configs: list[Path], cache_dir: Path | None = None) -> dict:
    """The estimate file's content for ``configs``, each in its full setting (no profile applied)."""
    from medmtl.config import load_config

    doc = {"commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "machine": machine(), "method": METHOD,
           "constants": {"peak_tflops": PEAK_TFLOPS, "peak_why": PEAK_WHY,
                         "sustained_fraction": SUSTAINED_FRACTION, "fraction_why": FRACTION_WHY,
                         "step_floor_s": STEP_FLOOR_S, "step_floor_why": STEP_FLOOR_WHY,
                         "forward_floor_s": FORWARD_FLOOR_S, "forward_floor_why": FORWARD_FLOOR_WHY},
           "counts_why": COUNTS_WHY, "not_counted": NOT_COUNTED, "studies": {}}
    for path in configs:
        cfg = load_config(path)
        start = time.perf_counter()
        doc["studies"][cfg.name] = study_estimate(path, cfg, cache_dir)
        print(f"{cfg.name}: {doc['studies'][cfg.name]['trainings']} trainings, "
              f"{doc['studies'][cfg.name]['steps']} steps ({time.perf_counter() - start:.0f} s)", flush=True)
    return doc


def study_estimate(path: Path, cfg, cache_dir: Path | None = None) -> dict:
    """One study's counts, FLOPs and estimated one-GPU time (see the constants above)."""
    import study_cost as sc

    plan = sc.plan_study(cfg, cache_dir)
    models = {key: {"label": sc.model_label(build), "build": build, "flops": sc.step_flops(build),
                    "trainings": 0, "steps": 0, "warmup_steps": 0, "forward": {}} for key, build in plan.models.items()}
    flops, seconds = _tally(plan, models)
    per_step = [m["flops"]["step"] for m in models.values() if m["trainings"]]
    return {"config": _shown(path), "config_sha1": hashlib.sha1(Path(path).read_bytes()).hexdigest(), "profile": None,
            "trainings": len(plan.trainings), "steps": sum(t.steps for t in plan.trainings),
            "warmup_steps": sum(t.warmup_steps for t in plan.trainings),
            "forward_calls": sum(p.calls for p in plan.forwards),
            "forward_images": sum(p.images for p in plan.forwards),
            "flops_per_step": {"min": min(per_step), "max": max(per_step)},
            "training_flops": flops["training"], "forward_flops": flops["forward"],
            "estimate": {"label": "estimate", "training_s": round(seconds["training"], 3),
                         "forward_s": round(seconds["forward"], 3),
                         "total_s": round(seconds["training"] + seconds["forward"], 3)},
            "notes": plan.notes, "models": models,
            "trainings_list": [[t.where, t.model, t.epochs, t.steps_per_epoch, t.warmup_steps, t.train_images]
                               for t in plan.trainings]}


def _tally(plan, models: dict) -> tuple[dict, dict]:
    """FLOPs and estimated seconds of the plan's trainings and forward passes; fills each model's
    trainings, steps and forward calls (by batch size) on the way, for the GPU check to time."""
    flops, seconds = {"training": 0.0, "forward": 0.0}, {"training": 0.0, "forward": 0.0}
    for t in plan.trainings:
        m = models[t.model]
        m["trainings"] += 1
        m["steps"] += t.steps
        m["warmup_steps"] += t.warmup_steps
        f = (t.steps - t.warmup_steps) * m["flops"]["step"] + t.warmup_steps * m["flops"]["warmup_step"]
        flops["training"] += f
        seconds["training"] += max(f / _throughput(m["build"]["train"]["precision"]), t.steps * STEP_FLOOR_S)
    for p in plan.forwards:
        m = models[p.model]
        agg = m["forward"].setdefault(str(p.batch_size), {"calls": 0, "images": 0})
        agg["calls"] += p.calls
        agg["images"] += p.images
        f = p.images * m["flops"]["forward_per_image"]
        flops["forward"] += f
        seconds["forward"] += max(f / _throughput(m["build"]["train"]["precision"]), p.calls * FORWARD_FLOOR_S)
    return flops, seconds


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (the file is committed: no machine's paths)."""
    path = Path(path).resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def _flops(lo: float, hi: float | None = None) -> str:
    """``2.07 TFLOP``, or a range ``22.6-44.4 GFLOP`` in the unit of its upper end."""
    hi = lo if hi is None else hi
    factor, prefix = next(((f, p) for f, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")) if hi >= f), (1, ""))
    low, high = f"{lo / factor:.3g}", f"{hi / factor:.3g}"
    return f"{high if low == high else f'{low}-{high}'} {prefix}FLOP"


def _hours(seconds: float) -> str:
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def render_estimate(doc: dict) -> str:
    """The README table of ``estimate``'s file: per study, the full protocol's trainings, steps, FLOPs
    and expected one-GPU time, then how they were derived."""
    c = doc["constants"]
    lines = ["| study | trainings | steps | FLOPs per step | total PFLOP | expected one-GPU time (estimate) |",
             "|---|---|---|---|---|---|"]
    for name, s in doc["studies"].items():
        total = (s["training_flops"] + s["forward_flops"]) / 1e15
        lines.append(f"| {name} | {s['trainings']} | {s['steps']:,} | "
                     f"{_flops(s['flops_per_step']['min'], s['flops_per_step']['max'])} | {total:.3g} | "
                     f"{_hours(s['estimate']['total_s'])} |")
    lines.append("")
    lines.append(f"{doc['method']}, `benchmarks/gpu_check.py estimate` at commit {doc['commit']}, {doc['date']} "
                 f"({doc['machine']}): each study's full config (no profile); {doc['counts_why']}; each training "
                 f"takes max(FLOPs / ({c['sustained_fraction']:.0%} of the H200's dense peak, "
                 f"{c['peak_tflops']['32-true']:g} TFLOPS TF32 at 32-true), steps x {c['step_floor_s'] * 1e3:g} ms), "
                 f"and each forward-only pass (validation, scoring, feature extraction) max(FLOPs / the same, "
                 f"calls x {c['forward_floor_s'] * 1e3:g} ms); not counted: {doc['not_counted']}.")
    return "\n".join(lines) + "\n"


def _step_times(estimate_path: Path, steps: int, warmup: int, trunk: str | None = None) -> dict:
    """Per study: every distinct model of its full protocol timed here, and the protocol's expected
    time from those times and the estimate file's counts."""
    import study_cost as sc

    doc = json.loads(Path(estimate_path).read_text())
    out = {"estimate_commit": doc["commit"], "timed_steps": steps, "warmup_steps": warmup, "trunk": trunk,
           "method": "steps x measured step time + forward calls x measured forward time (random batches already "
                     "on the device: data loading not included)", "studies": {}}
    measured: dict[str, dict] = {}
    for name, study in doc["studies"].items():
        for key, m in study["models"].items():
            if key in measured:
                continue
            try:
                measured[key] = sc.time_model(m["build"], steps, warmup, trunk,
                                              eval_batches=tuple(int(b) for b in m["forward"]))
            except Exception as exc:      # one failing model must not hide the others
                measured[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(name, m["label"], json.dumps(measured[key]), flush=True)
        out["studies"][name] = _expected(study, measured)
        print(name, json.dumps({k: v for k, v in out["studies"][name].items() if k != "models"}), flush=True)
    return out


def _expected(study: dict, measured: dict) -> dict:
    training = forward = 0.0
    errors = []
    models = {}
    for key, m in study["models"].items():
        t = measured[key]
        if "error" in t:
            errors.append(key)
            continue
        training += m["steps"] * t["step_s"]
        forward += sum(f["calls"] * t["forward_s"][b] for b, f in m["forward"].items())
        models[key] = {"label": m["label"], "steps": m["steps"], "step_s": t["step_s"], "forward_s": t["forward_s"]}
    return {"trainings": study["trainings"], "steps": study["steps"], "training_s": round(training, 1),
            "forward_s": round(forward, 1), "expected_s": None if errors else round(training + forward, 1),
            "estimate_s": study["estimate"]["total_s"], "errors": errors, "models": models}


def check(out: Path, install: bool, epochs: int = 4, steps: int = 60, dry_run: bool = False,
          timed_steps: int = 20, estimate_path: Path = ESTIMATE) -> int:
    import torch  # the GPU image's torch

    out.mkdir(parents=True, exist_ok=True)
    env = _env(install)
    summary = {"cuda": torch.cuda.is_available(),
               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__}
    print(json.dumps(summary), flush=True)
    returncode = 0
    if not dry_run:
        with open(out / "tests.log", "w") as log:
            tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", DESELECT,
                                    *TESTS], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        summary["tests_exit"] = returncode = tests.returncode
        print((out / "tests.log").read_text().strip().splitlines()[-1], flush=True)
    sys.path[:0] = [p for p in env["PYTHONPATH"].split(os.pathsep) if p]
    os.environ["MEDMTL_DATA"] = env.get("MEDMTL_DATA", os.environ.get("MEDMTL_DATA", ""))
    if not dry_run:
        summary["train"] = {}
        for precision in PRECISIONS:
            summary["train"][precision] = _train(precision, out, epochs, steps)
            print(precision, json.dumps(summary["train"][precision]), flush=True)
    small = {"steps": 2, "size": 32, "trunk": "test_tiny"} if dry_run else {"steps": 10, "size": 128}
    summary["heads"] = _heads_matrix(out, **small)
    timing = {"steps": 1, "warmup": 1, "trunk": "test_tiny"} if dry_run else {"steps": timed_steps, "warmup": 5}
    summary["study_times"] = _step_times(estimate_path, **timing)
    summary["ray"] = _ray_grid(out, **small)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    failed = [k for k, v in summary["heads"]["matrix"].items() if "error" in v]
    failed += [k for s in summary["study_times"]["studies"].values() for k in s["errors"]]
    return returncode or int(bool(failed) or not summary["heads"]["same_seed_same_weights"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    b = sub.add_parser("bundle", help="download the wheels and copy the data into .gpu/ (needs PyPI)")
    b.add_argument("--data", type=Path, default=Path(os.environ.get("MEDMTL_DATA", REPO.parent / "shared" / "datasets")))
    c = sub.add_parser("check", help="run the GPU checks (on the GPU machine)")
    c.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "runs" / "gpu_check")))
    c.add_argument("--no-install", action="store_true", help="use the installed packages, not .gpu/whl")
    c.add_argument("--epochs", type=int, default=4, help="epochs of each timed training")
    c.add_argument("--steps", type=int, default=60, help="steps per epoch of each timed training")
    c.add_argument("--dry-run", action="store_true",
                   help="the heads matrix, same-seed check, study step times and Ray grid in a few steps of a tiny "
                        "trunk, without the test suite")
    c.add_argument("--timed-steps", type=int, default=20, help="timed steps per distinct model of the studies")
    c.add_argument("--estimate", type=Path, default=ESTIMATE,
                   help="the counts of each study's full protocol (written by the estimate step)")
    e = sub.add_parser("estimate", help="count each study's full protocol and estimate its one-GPU time from "
                                        "FLOPs (no GPU needed; MEDMTL_DATA must hold the datasets)")
    e.add_argument("--out", type=Path, default=ESTIMATE)
    e.add_argument("--config", type=Path, action="append",
                   help="a study config (repeatable); default: the five studies in experiments/")
    e.add_argument("--cache", type=Path, default=None, help="decode cache (default: each config's cache_dir)")
    args = parser.parse_args()
    if args.step == "bundle":
        bundle(args.data)
    elif args.step == "estimate":
        doc = estimate(args.config or [REPO / "experiments" / f"{s}.yaml" for s in STUDIES], args.cache)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        print(render_estimate(doc), end="")
    else:
        sys.exit(check(args.out, install=not args.no_install, epochs=args.epochs, steps=args.steps,
                       dry_run=args.dry_run, timed_steps=args.timed_steps, estimate_path=args.estimate))


if __name__ == "__main__":
    main()
