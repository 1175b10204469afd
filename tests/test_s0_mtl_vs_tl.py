"""Study 0 (multi-task vs transfer learning) end to end in a reduced version: the shipped config runs,
and its report holds the study's tables (reference values, comparisons, best-epoch training)."""
from __future__ import annotations

import json

import pandas as pd

from medmtl.config import load_config, parse_config, set_dotted
from tests.conftest import REPO, assert_beats_chance, need_data


def reduced(name: str, **dotted):
    """The shipped config ``experiments/NAME.yaml`` with its quick overrides and then ``dotted``."""
    cfg = load_config(REPO / "experiments" / f"{name}.yaml")
    raw = cfg.model_dump(mode="json")
    for key, value in {**cfg.profiles["quick"], **dotted}.items():
        set_dotted(raw, key, value)
    return parse_config(raw, f"reduced {name}")


def test_s0_runs_end_to_end_with_its_tables(tmp_path, shared_cache):
    from medmtl.api import run as run_experiment

    need_data("pcam")
    cfg = reduced("s0-mtl-vs-tl", run_dir=str(tmp_path / "s0"), cache_dir=str(shared_cache),
                  **{"train.epochs": 2, "train.steps_per_epoch": 15, "data.limit_train": 256, "data.limit_eval": 64,
                     "model.trunk.kwargs": {"width": 0.0625}, "train.mlflow": False})
    assert cfg.data.augmentation == "s0" and cfg.data.size == 32 and cfg.train.optimizer.momentum == 0.9
    run = run_experiment(cfg, progress=False)
    doc = json.loads((run / "report" / "results.json").read_text())
    assert {r["arm"] for r in doc["rows"]} == {"mtl", "tl", "stl"}
    assert {r["task"] for r in doc["rows"]} == {"pcam"}
    sections = doc["sections"]
    ref = {r["quantity"]: r for r in sections["reference"]["table"]}
    assert len(ref) == 7 and all(r["seeds"] == 1 for r in ref.values())      # every published value has ours
    assert 0 <= ref["TL base model (skin), validation accuracy"]["ours (mean)"] <= 100
    pairs = {r["comparison"] for r in sections["comparisons"]["table"]}
    assert pairs == {"mtl vs tl", "mtl vs stl"}
    models = {(r["arm"], r["model"], r["task"]) for r in sections["training"]["table"]}
    assert {("mtl", "model", "skin"), ("mtl", "model", "brain_tumor"), ("tl", "source", "skin"),
            ("tl", "target", "pcam")} <= models
    assert "PCam" in (run / "report" / "results.md").read_text()             # the stand-in is said
    pred = pd.read_csv(run / "results" / "predictions.csv", dtype={"id": str, "group": str})
    for arm in ("mtl", "tl", "stl"):
        assert_beats_chance(pred, arm, "pcam", "1")
