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
   - a Ray grid of two trials sharing the GPU (``gpus_per_trial=0.5``), where Ray is installed.
   Logs and ``gpu_check.json`` land in DIR.

``check --no-install --dry-run`` runs the new parts on whatever device there is, in a few steps of
a tiny trunk and without the test suite (tests/test_benchmarks.py runs it on the CPU, with
``MEDMTL_GPU_CHECK_CACHE`` naming its decode cache; default: DIR/cache).

A plain machine with CUDA and ``pip install -e .[test]`` done runs step 2 with ``--no-install``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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


def check(out: Path, install: bool, epochs: int = 4, steps: int = 60, dry_run: bool = False) -> int:
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
    summary["ray"] = _ray_grid(out, **small)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    failed = [k for k, v in summary["heads"]["matrix"].items() if "error" in v]
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
                   help="the heads matrix, same-seed check and Ray grid in a few steps, without the test suite")
    args = parser.parse_args()
    if args.step == "bundle":
        bundle(args.data)
    else:
        sys.exit(check(args.out, install=not args.no_install, epochs=args.epochs, steps=args.steps,
                       dry_run=args.dry_run))


if __name__ == "__main__":
    main()
