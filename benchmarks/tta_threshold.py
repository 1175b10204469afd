"""Rescore a finished run's models on validation and test, with and without TTA, at 0.5 and at the
validation Youden threshold, beside each split's class prevalence and mean score (calibration).

    python benchmarks/tta_threshold.py CONFIG [--out experiments/results/<name>.json]

Issue 12 item 5 asked why test accuracy fell below the majority class with TTA on BreastMNIST at
64 px. The file this writes holds the four (split, TTA) cells per seed and the epoch history of
each model, so the answer can be read from numbers instead of typed in.
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import pandas as pd

from medmtl.api import load_config
from medmtl.data.pipeline import prepare
from medmtl.evaluation.scoring import metrics_of, score_run
from studies import git_commit, machine  # benchmarks/ is on sys.path when this script runs

KEEP = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "threshold_youden",
        "accuracy_youden", "balanced_accuracy_youden")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cfg = load_config(args.config)
    exp = cfg.experiment
    data = prepare(cfg)
    task = exp.main_task
    spec = data.tasks[task]
    positive = f"score_{spec.classes[1]}"
    run_dir = Path(cfg.run_dir)
    seeds = {}
    for seed in exp.seeds:
        for arm in exp.arms:
            model = run_dir / "arms" / arm.name / f"seed{seed}"
            if not (model / "checkpoints" / "best.ckpt").is_file():
                raise SystemExit(f"{model}: no checkpoints/best.ckpt; run `medmtl run {args.config}` first")
            frames = [score_run(model, data, [task], split, tta, "tta" if tta else "plain", seed)
                      for tta in (False, True) for split in ("val", "test")]
            pred = pd.concat(frames, ignore_index=True)
            metrics = metrics_of(pred, data)
            cells = {}
            for view in ("plain", "tta"):
                for split in ("val", "test"):
                    rows = pred[(pred.arm == view) & (pred.split == split)]
                    m = metrics[view][str(seed)][task][split]
                    cells[f"{split}/{view}"] = {**{k: m[k] for k in KEEP if k in m},
                                                "prevalence": float((rows["y_true"] == 1).mean()),
                                                "mean_score": float(rows[positive].mean()),
                                                "majority_accuracy": float(max((rows["y_true"] == 1).mean(),
                                                                               (rows["y_true"] == 0).mean()))}
            hist = pd.read_csv(model / "history.csv")
            cols = ["epoch"] + [c for c in hist.columns if c.startswith(("val_auc/", "val_accuracy/"))]
            best = json.loads((model / "done.json").read_text())["decisions"][0]["chose"]
            seeds[f"{arm.name}/seed{seed}"] = {"cells": cells, "best_epoch": best,
                                               "history": hist[cols].to_dict(orient="list")}
    doc = {"what": f"{args.config}: each model rescored with and without TTA ({positive} is the positive class)",
           "commit": git_commit(), "date": datetime.date.today().isoformat(), "machine": machine(), "models": seeds}
    out = args.out or Path("experiments/results") / f"{args.config.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    for name, s in seeds.items():
        for cell, m in s["cells"].items():
            print(f"{name} {cell:10s} auc {m['auc']:.3f} acc {m['accuracy']:.3f} (majority {m['majority_accuracy']:.3f})"
                  f" acc@youden {m.get('accuracy_youden', float('nan')):.3f} mean score {m['mean_score']:.3f}"
                  f" prevalence {m['prevalence']:.3f}")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
