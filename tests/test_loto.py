"""Leave-one-task-out on five shared tasks (four left-out groups), tiny CPU settings."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from medmtl.config import parse_config
from medmtl.errors import ConfigError
from medmtl.protocols.loto import choose, left_out_groups, rank_table
from tests.conftest import need_data


def test_related_tasks_are_left_out_together():
    assert left_out_groups(["a", "b", "c"], [["a", "c"]]) == [["a", "c"], ["b"]]
    with pytest.raises(ConfigError, match=r"loto.related: \['z'\] are not in loto.pool"):
        left_out_groups(["a", "b"], [["a", "z"]])


def test_choice_ignores_the_target_task():
    scores = pd.DataFrame({"task": ["t1", "t1", "t2", "t2", "t3", "t3"], "combo": ["A", "B"] * 3,
                           "seed": 0, "auc": [0.9, 0.6, 0.55, 0.8, 0.52, 0.7]})
    ranks = rank_table(scores)
    assert ranks.loc["A", "t1"] == 1 and ranks.loc["B", "t2"] == 1
    assert choose(ranks, "t1") == "B"      # B wins on t2 and t3
    assert choose(ranks, "t3") == "A"      # A and B tie on t1 and t2 (1 and 2 each): the first in grid order
    assert choose(ranks.drop(columns=["t3"]), "t2") == "A"
    # the excluded tasks (related to the target, or holding its copies) carry no weight
    assert choose(ranks, "t1", exclude=["t2"]) == "B" and choose(ranks, "t2", exclude=["t3"]) == "A"
    with pytest.raises(ConfigError, match="no left-out task is left to rank combinations for 't1'"):
        choose(ranks, "t1", exclude=["t2", "t3"])


def test_loto_run_over_five_shared_tasks(tmp_path, shared_cache, monkeypatch):
    from medmtl.protocols import run_experiment

    need_data()
    task = lambda name, reader, classes, target, size, mode, split: {  # noqa: E731
        "name": name, "kind": "binary" if len(classes) == 2 else "multiclass", "classes": classes,
        "target": target, "reader": reader, "image": {"size": size, "mode": mode}, "split": split}
    official = {"method": "official"}
    cfg = parse_config({
        "name": "loto", "seed": 0, "cache_dir": str(shared_cache), "run_dir": str(tmp_path / "loto"),
        "tasks": [
            task("breastmnist", {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/breastmnist.npz"},
                 ["malignant", "normal_or_benign"], "label", 28, "L", official),
            task("busi_cls", {"name": "busi", "root": "${MEDMTL_DATA}/busi"}, ["benign", "malignant", "normal"],
                 "class", 128, "L", {"method": "holdout"}),
            task("retinamnist", {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/retinamnist.npz"},
                 ["0", "1", "2", "3", "4"], "label", 28, "RGB", official),
            task("pcam", {"name": "folder", "root": "${MEDMTL_DATA}/pcam"}, ["0", "1"], "class", 96, "RGB", official),
            task("skin", {"name": "folder", "root": "${MEDMTL_DATA}/skin_cancer_isic"}, ["benign", "malignant"],
                 "class", 128, "RGB", {"method": "official", "val_fraction": 0.15}),
        ],
        "data": {"batch_size": 32, "size": 28, "limit_train": 48, "limit_eval": 40, "augmentation": "s2"},
        "model": {"trunk": {"name": "test_tiny"}},
        "train": {"epochs": 1, "mlflow": False},
        "loto": {"pool": ["breastmnist", "busi_cls", "retinamnist", "pcam", "skin"],
                 "related": [["busi_cls", "breastmnist"]],
                 "grid": {"train.optimizer.lr": [0.05, 0.01]}, "seeds": [0], "lrs": [0.01], "svm_c": [0.01, 1.0]},
    })
    out = run_experiment(cfg, progress=False) / "loto"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"][0] == ["busi_cls", "breastmnist"] and len(summary["groups"]) == 4
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 5 * 2 and scores["auc"].between(0, 1).all()   # each task x each combination
    # the busi/breastmnist model never saw either of them: its training config lacks both
    import yaml

    trial = yaml.safe_load(next((out / "trials" / "busi_cls+breastmnist").rglob("model/config.yaml")).read_text())
    assert [t["name"] for t in trial["tasks"]] == ["retinamnist", "pcam", "skin"]
    assert set(summary["targets"]) == {"breastmnist", "busi_cls", "retinamnist", "pcam", "skin"}
    pred = pd.read_csv(out / "predictions.csv")
    assert set(pred["arm"]) == {"loto_feature_extraction", "loto_finetune"}
    assert set(pred[pred.split == "test"]["task"]) == set(summary["targets"])
    # each transfer carries its trunk's best-epoch choice, checked against the target's forbidden tasks
    upstream = [d for d in summary["audit"]["decisions"] if d["for"]["arm"] == "loto (upstream trunk)"]
    assert {d["for"]["task"] for d in upstream} == set(summary["targets"])
    busi = next(d for d in upstream if d["for"]["task"] == "busi_cls")
    assert {r["task"] for r in busi["reads"]} <= {"retinamnist", "pcam", "skin"} and "breastmnist" in busi["forbidden"]
    # rerun: finished trials are not trained again
    import medmtl.protocols.loto as loto
    import medmtl.protocols.strategies as strategies

    calls = []
    real = strategies.train_arm
    spy = lambda *a, **k: calls.append(a) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(strategies, "train_arm", spy)
    monkeypatch.setattr(loto, "train_arm", spy)
    run_experiment(cfg, progress=False)
    assert calls == []       # neither the LOTO trials nor the transfers are trained again


def test_loto_trials_run_as_parallel_grid_trials(tmp_path, shared_cache):
    """``--workers 2``: the pool trainings (left-out group x combination x seed) run as Ray trials;
    the protocol then finds them finished and only reads them back."""
    from medmtl.protocols import run_experiment

    need_data("medmnist")
    med = lambda name, classes, mode: {  # noqa: E731
        "name": name, "kind": "binary" if len(classes) == 2 else "ordinal", "classes": classes, "target": "label",
        "reader": {"name": "medmnist", "path": f"${{MEDMTL_DATA}}/medmnist/{name}.npz"},
        "image": {"size": 28, "mode": mode}, "split": {"method": "official"}}
    cfg = parse_config({
        "name": "loto_par", "seed": 0, "cache_dir": str(shared_cache), "run_dir": str(tmp_path / "loto"),
        "tasks": [med("breastmnist", ["malignant", "normal_or_benign"], "L"),
                  med("retinamnist", ["0", "1", "2", "3", "4"], "RGB")],
        "data": {"batch_size": 32, "size": 28, "limit_train": 48, "limit_eval": 40},
        "model": {"trunk": {"name": "test_tiny"}},
        "train": {"epochs": 1, "mlflow": False},
        "loto": {"pool": ["breastmnist", "retinamnist"], "grid": {"train.optimizer.lr": [0.05, 0.01]},
                 "seeds": [0], "lrs": [0.01], "svm_c": [1.0], "transfer": ["feature_extraction"]},
    })
    out = run_experiment(cfg, progress=False, workers=2) / "loto"
    grid = sorted((out / "grid" / "trials").iterdir())
    assert len(grid) == 4 and all((g / "result.json").is_file() for g in grid)   # 2 groups x 2 lrs
    stored = [json.loads((g / "result.json").read_text()) for g in grid]
    assert all(0 <= a <= 1 for r in stored for a in r["auc"].values())
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 4


def test_a_loto_pool_with_undeclared_copies_is_refused_by_the_audit(tmp_path, shared_cache):
    """A purposely leaky config: BreastMNIST (all BUSI copies) in the pool but not declared related to
    BUSI. BUSI's combination is still ranked without it, but the trunk BUSI is transferred from chose
    its best epoch on BreastMNIST's validation labels: the run fails, naming that decision."""
    from medmtl.evaluation.audit import AuditError
    from medmtl.protocols import run_experiment

    need_data("medmnist"), need_data("busi")
    cfg = parse_config({
        "name": "leaky", "seed": 0, "cache_dir": str(shared_cache), "run_dir": str(tmp_path / "leaky"),
        "tasks": [
            {"name": "breastmnist", "kind": "binary", "classes": ["malignant", "normal_or_benign"], "target": "label",
             "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/breastmnist.npz"},
             "image": {"size": 28, "mode": "L"}, "split": {"method": "official"}},
            {"name": "busi_cls", "kind": "multiclass", "classes": ["benign", "malignant", "normal"], "target": "class",
             "reader": {"name": "busi", "root": "${MEDMTL_DATA}/busi"}, "image": {"size": 128, "mode": "L"},
             "split": {"method": "holdout"}},
            {"name": "retinamnist", "kind": "ordinal", "classes": ["0", "1", "2", "3", "4"], "target": "label",
             "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/retinamnist.npz"},
             "image": {"size": 28, "mode": "RGB"}, "split": {"method": "official"}},
        ],
        "data": {"batch_size": 16, "size": 28, "limit_train": 32, "limit_eval": 24},
        "model": {"trunk": {"name": "test_tiny"}},
        "train": {"epochs": 1, "steps_per_epoch": 2, "mlflow": False},
        "loto": {"pool": ["breastmnist", "busi_cls", "retinamnist"], "grid": {"train.optimizer.lr": [0.01]},
                 "seeds": [0], "lrs": [0.01], "svm_c": [1.0], "transfer": ["feature_extraction"]},
    })
    with pytest.raises(AuditError, match=r"best_epoch for \{'arm': 'loto \(upstream trunk\)', 'seed': 0, "
                                         r"'task': 'busi_cls'\} read 'breastmnist' \(val\)"):
        run_experiment(cfg, progress=False)
    doc = json.loads((tmp_path / "leaky" / "results" / "audit.json").read_text())
    assert any("'busi_cls'" in p and "'breastmnist'" in p for p in doc["problems"])
