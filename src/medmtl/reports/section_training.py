"""Training and validation loss and accuracy per task at each model's best epoch (``history.csv``),
as the studies' tables report them; one row per trained model (sub-runs such as a transfer's source
model get their own rows)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from medmtl.reports._sections import REPORT_SECTIONS, Section


def _runs(seed_dir: Path) -> dict[str, Path]:
    """Every training run under one arm's seed dir: itself, the runs done.json names, their siblings."""
    out = {}
    if (seed_dir / "history.csv").is_file():
        out[""] = seed_dir
    for hist in sorted(seed_dir.glob("*/history.csv")) + sorted(seed_dir.glob("*/*/history.csv")):
        out[str(hist.parent.relative_to(seed_dir))] = hist.parent
    done = seed_dir / "done.json"
    if done.is_file():
        for key, run in (json.loads(done.read_text()).get("runs") or {}).items():
            if (Path(run) / "history.csv").is_file() and Path(run) not in out.values():
                out[key or "model"] = Path(run)
    return out


def best_row(run: Path) -> pd.Series | None:
    hist = pd.read_csv(run / "history.csv")
    if not len(hist):
        return None
    metrics = run / "metrics.json"
    if metrics.is_file():
        best = json.loads(metrics.read_text()).get("best_epoch")
        if best is not None and (hist.epoch == best).any():
            return hist[hist.epoch == best].iloc[-1]
    return hist.iloc[-1]


@REPORT_SECTIONS.register("training", order=30)
def training_section(inputs) -> Section | None:
    seed = inputs.reference_seed
    rows = []
    apps = sorted(p for p in (inputs.run_dir / "applications").glob("*") if (p / "arms").is_dir())
    places = [(f"{a.name}: ", a / "arms" / arm / f"seed{seed}") for a in apps for arm in inputs.arms]
    places += [("", inputs.arm_dirs.get(arm, {}).get(seed)) for arm in inputs.arms] if not apps else []
    for prefix, seed_dir in places:
        if seed_dir is None or not seed_dir.is_dir():
            continue
        arm = prefix + seed_dir.parent.name
        for sub, run in _runs(seed_dir).items():
            row = best_row(run)
            if row is None:
                continue
            tasks = sorted({c.split("/", 1)[1] for c in row.index if "/" in c})
            for task in tasks:
                def get(col):
                    v = row.get(f"{col}/{task}")
                    return float(v) if v is not None and not pd.isna(v) else math.nan
                rows.append({"arm": arm, "model": sub or "model", "task": task, "best epoch": int(row["epoch"]),
                             "train loss": get("train_loss"), "train accuracy": get("train_accuracy"),
                             "val loss": get("val_cross_entropy"), "val accuracy": get("val_accuracy"),
                             "val AUC": get("val_auc")})
    if not rows:
        return None
    return Section(f"Training and validation at the best epoch (seed {seed})",
                   text=["Per trained model and task, at the epoch early stopping kept: training loss and "
                         "accuracy (running, over the epoch's batches, augmented) and validation loss "
                         "(cross-entropy), accuracy and AUC."],
                   table=rows, data=rows)
