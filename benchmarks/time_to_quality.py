"""time_to_quality: MedMNIST v2's ResNet-18 (28) recipe on BreastMNIST, by medmtl and by a bare loop.

    python benchmarks/time_to_quality.py [--epochs 100] [--seed 0]

The same recipe twice, same seed: ResNet-18 with a 3x3 stride-1 stem and no max-pool, images in
[-1, 1], no augmentation, Adam 1e-3, batch 128, ``--epochs`` epochs (learning rate x0.1 at 50% and
75% of them), the epoch of the best validation AUC scored on test. Once through medmtl
(``experiments/reproduce/medmnist-v2-resnet18.yaml``, BreastMNIST only) and once as a hand-written
PyTorch loop over the npz arrays. Prints both wall times, both test AUCs and the time ratio
(medmtl / bare; data preparation and scoring included on both sides).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
CONFIG = REPO / "experiments" / "reproduce" / "medmnist-v2-resnet18.yaml"


def milestones(epochs: int) -> list[int]:
    """The recipe's 50 and 75 of 100 epochs, scaled to ``epochs`` (distinct, increasing, >= 1)."""
    return sorted({max(1, round(epochs * f)) for f in (0.5, 0.75)})


def with_medmtl(epochs: int, seed: int, work: Path) -> tuple[float, float]:
    from medmtl.config import load_config, override_config
    from medmtl.protocols import run_experiment

    start = time.perf_counter()
    base = load_config(CONFIG)
    cfg = override_config(base, {
        "run_dir": str(work / "medmtl"), "cache_dir": str(work / "cache"), "train.epochs": epochs,
        "train.scheduler.milestones": milestones(epochs), "experiment.seeds": [seed],
        "experiment.applications": {}, "experiment.main_task": "breastmnist", "model.trunk.in_chans": 1,
        "experiment.reference": None,
        "tasks": [t.model_dump(mode="json") for t in base.tasks if t.name == "breastmnist"]}, "time_to_quality")
    out = run_experiment(cfg, progress=False)
    auc = json.loads((out / "results" / "metrics.json").read_text())["resnet18"][str(seed)]["breastmnist"]["test"]["auc"]
    return time.perf_counter() - start, float(auc)


def bare_model():
    import timm

    model = timm.create_model("resnet18", num_classes=2, in_chans=1)
    model.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)      # the MedMNIST (28) stem
    model.maxpool = torch.nn.Identity()
    return model


def with_bare_loop(epochs: int, seed: int) -> tuple[float, float]:
    start = time.perf_counter()
    torch.manual_seed(seed)
    data = np.load(Path(os.environ["MEDMTL_DATA"]) / "medmnist" / "breastmnist.npz")
    split = {s: (torch.tensor(data[f"{s}_images"], dtype=torch.float32).div(255).sub(0.5).div(0.5).unsqueeze(1),
                 torch.tensor(data[f"{s}_labels"]).reshape(-1).long()) for s in ("train", "val", "test")}
    model = bare_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones(epochs), 0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def scores(x):
        model.eval()
        return torch.cat([model(x[i:i + 256]).softmax(1)[:, 1] for i in range(0, len(x), 256)]).numpy()

    best, best_auc = None, -1.0
    x, y = split["train"]
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(128):
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
        auc = roc_auc_score(split["val"][1].numpy(), scores(split["val"][0]))
        if auc > best_auc:
            best_auc, best = auc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    test = roc_auc_score(split["test"][1].numpy(), scores(split["test"][0]))
    return time.perf_counter() - start, float(test)


def time_to_quality(epochs: int = 100, seed: int = 0) -> dict:
    os.environ.setdefault("MEDMTL_DATA", str(REPO.parent / "shared" / "datasets"))
    with tempfile.TemporaryDirectory() as tmp:
        t_medmtl, auc_medmtl = with_medmtl(epochs, seed, Path(tmp))
    t_bare, auc_bare = with_bare_loop(epochs, seed)
    return {"epochs": epochs, "seed": seed, "medmtl_seconds": t_medmtl, "medmtl_test_auc": auc_medmtl,
            "bare_seconds": t_bare, "bare_test_auc": auc_bare, "ratio": t_medmtl / t_bare}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the result (with commit, date, machine) to this JSON file")
    args = ap.parse_args()
    r = time_to_quality(args.epochs, args.seed)
    if args.out:
        from studies import git_commit, machine

        args.out.write_text(json.dumps({"what": "python benchmarks/time_to_quality.py", **r, "commit": git_commit(),
                                        "date": time.strftime("%Y-%m-%d"), "machine": machine()}, indent=2) + "\n")
    print(f"# time_to_quality: {r['epochs']} epochs, seed {r['seed']}: medmtl {r['medmtl_seconds']:.1f} s, test AUC "
          f"{r['medmtl_test_auc']:.3f}; bare loop {r['bare_seconds']:.1f} s, test AUC {r['bare_test_auc']:.3f}")
    print(f"time_to_quality: {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
