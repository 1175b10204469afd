"""Study s2 (experiments/s2-pretrain-pool.yaml): LOTO rank table, the pool-trunk artifact, and a
reduced end-to-end run on three shared tasks (BUSI and BreastMNIST left out together)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medmtl.errors import ConfigError
from medmtl.protocols.loto import left_out_groups, rank_summary, rank_table, target_groups
from tests.conftest import REPO, assert_beats_chance, need_data


def test_rank_table_of_a_made_score_table():
    # combination A wins t1, B wins t2 (over two seeds), C is last on both; t3 ties A and B
    scores = pd.DataFrame({
        "task": ["t1"] * 3 + ["t2"] * 6 + ["t3"] * 3,
        "combo": ["A", "B", "C"] + ["A", "B", "C"] * 2 + ["A", "B", "C"],
        "seed": [0] * 3 + [0] * 3 + [1] * 3 + [0] * 3,
        "auc": [0.9, 0.8, 0.7, 0.6, 0.9, 0.5, 0.7, 0.8, 0.5, 0.75, 0.75, 0.6]})
    table = rank_summary(rank_table(scores))
    assert table.loc["A", ["t1", "t2", "t3"]].tolist() == [1.0, 2.0, 1.5]
    assert table.loc["B", ["t1", "t2", "t3"]].tolist() == [2.0, 1.0, 1.5]
    assert table.loc["C", ["t1", "t2", "t3"]].tolist() == [3.0, 3.0, 3.0]
    assert table["mean_rank"].to_dict() == pytest.approx({"A": 1.5, "B": 1.5, "C": 3.0})
    assert table.loc["A", "mean_rank_without_t1"] == 1.75 and table.loc["B", "mean_rank_without_t1"] == 1.25
    assert list(table.index)[-1] == "C"     # sorted by mean rank


def test_targets_keep_related_tasks_together():
    groups = left_out_groups(["a", "b", "c", "d"], [["a", "b"]])
    assert target_groups(groups, ["b", "c"]) == [["a", "b"], ["c"]]
    assert target_groups(groups, None) == groups
    with pytest.raises(ConfigError, match=r"loto.targets: \['z'\] are not in loto.pool"):
        target_groups(groups, ["z"])


def test_s2_config_parses_with_quick_overrides():
    from medmtl.config import load_config
    from medmtl.protocols import apply_quick

    cfg = load_config(REPO / "experiments" / "s2-pretrain-pool.yaml")
    assert len(cfg.loto.pool) == 7 and cfg.loto.related == [["busi_cls", "breastmnist"]]
    quick = apply_quick(cfg)
    assert quick.loto.targets == ["busi_cls", "breastmnist", "retinamnist"]
    assert len(set(quick.experiment.applications)) == 3 and quick.data.size == 32


def test_s2_reduced_end_to_end(tmp_path, shared_cache):
    """Three tasks, two combinations, one seed, a few steps at 28 px: every arm, the rank table,
    the pool trunk with its card (loaded back through ``pretrained: PATH``) and the leakage counts."""
    import torch

    from medmtl.api import run as run_experiment
    from medmtl.config import load_config

    need_data("busi")
    need_data("medmnist")
    tasks = ["busi_cls", "breastmnist", "retinamnist"]
    full = load_config(REPO / "experiments" / "s2-pretrain-pool.yaml")
    apps = {"breastmnist": {"main_task": "breastmnist", "tasks": tasks}}
    cfg = _s2_config({
        "cache_dir": str(shared_cache), "run_dir": str(tmp_path / "s2"),
        "tasks": [t.model_dump(mode="json") for t in full.tasks if t.name in tasks],
        "data.size": 28, "data.batch_size": 16, "data.limit_train": 96, "data.limit_eval": 40,
        "train.epochs": 1, "train.steps_per_epoch": 3, "train.early_stopping.patience": None,
        "loto.pool": tasks, "loto.targets": None, "loto.seeds": [0], "loto.lrs": [0.01], "loto.svm_c": [1.0],
        "loto.grid": {"train.optimizer.lr": [0.01, 0.001], "train.optimizer.head_lr_mult": [10.0],
                      "train.warmup.steps": [1]},
        "experiment.seeds": [0], "experiment.applications": apps,
        "experiment.arms": [{"name": "imagenet_fe", "strategy": "feature_extraction", "svm_c": [1.0]},
                            {"name": "imagenet_ft", "strategy": "finetune", "lrs": [0.01]}],
    })
    run = run_experiment(cfg, progress=False)

    # LOTO: two left-out groups, ranks of both combinations on the three tasks
    table = pd.read_csv(run / "loto" / "rank_table.csv", index_col=0)
    assert table.shape[0] == 2 and {"busi_cls", "breastmnist", "retinamnist", "mean_rank"} <= set(table.columns)
    # each task's ranks follow its validation AUCs (scores.csv): the better combination ranks 1
    scores = pd.read_csv(run / "loto" / "scores.csv")
    for t in tasks:
        auc = scores[scores.task == t].groupby("combo")["auc"].mean()
        ranks = table[t].rename(index=str)
        if auc.nunique() == 2:
            assert ranks[str(auc.idxmax())] == 1.0 and ranks[str(auc.idxmin())] == 2.0, t
        else:
            assert list(ranks) == [1.5, 1.5], t
    summary = json.loads((run / "loto" / "summary.json").read_text())
    assert summary["groups"] == [["busi_cls", "breastmnist"], ["retinamnist"]]
    metrics = json.loads((run / "results" / "metrics.json").read_text())
    for arm in ("imagenet_fe", "imagenet_ft", "loto_feature_extraction", "loto_finetune", "loto_joint"):
        assert "breastmnist" in metrics[arm]["0"], arm
        assert 0.0 <= metrics[arm]["0"]["breastmnist"]["test"]["auc"] <= 1.0

    pred = pd.read_csv(run / "results" / "predictions.csv", dtype={"id": str, "group": str})
    # the feature-extraction arms (their SVM sees every training image); 3 fine-tuning steps are too few to tell
    for arm in ("imagenet_fe", "loto_feature_extraction"):
        assert_beats_chance(pred, arm, "breastmnist", "malignant")
    # the pool trunk: its card, and `pretrained: PATH` loads exactly the saved weights
    art = run / "artifacts"
    card = json.loads((art / "model_card.json").read_text())
    assert [t["name"] for t in card["tasks"]] == tasks and card["combination_id"] in summary["combinations"]
    assert all(t["images"]["train"] > 0 and "auc" in t["val_metrics"] for t in card["tasks"])
    assert (art / "model_card.md").read_text().startswith("# ")
    saved = torch.load(art / "pool_trunk.pt", map_location="cpu", weights_only=True)
    # the network it was trained in: the ImageNet start's TF padding travels with the weights
    assert saved["trunk_name"] == "efficientnet_lite0" and saved["trunk_kwargs"]["pad_type"] == "same"
    from medmtl.engine.build import build_model

    new = _s2_config({
        "tasks": [t.model_dump(mode="json") for t in full.tasks if t.name == "skin"],
        "model.trunk.pretrained": str(art / "pool_trunk.pt")})
    trunk = build_model(new, [_spec("skin", 2)]).trunk
    for key, value in saved["trunk"].items():
        assert torch.equal(trunk.state_dict()[key], value), key
    assert trunk.trunk_kwargs["pad_type"] == "same" and trunk.model.bn1.eps == saved["trunk_kwargs"]["bn_eps"]

    # leakage guard: BreastMNIST images are BUSI copies; the counts reach the results and the card
    data = json.loads((run / "results" / "data.json").read_text())
    assert data["breastmnist"]["cross_duplicates"]["busi_cls"] > 0
    assert data["busi_cls"]["cross_duplicates"]["breastmnist"] > 0
    removed = {t["name"]: t["removed_by_leakage_guard"] for t in card["tasks"]}
    assert removed["breastmnist"].get("busi_cls", 0) > 0 and removed["busi_cls"].get("breastmnist", 0) > 0

    # the report carries the rank table and the score-difference figures
    report = json.loads((run / "report" / "results.json").read_text())
    assert "loto_ranks" in report["sections"] and "loto_transfer" in report["sections"]
    html = (run / "report" / "report.html").read_text()
    assert "Score difference, feature extraction" in html and np.isfinite(
        report["sections"]["loto_transfer"]["table"][0]["fe: mtl - imagenet"])


def _s2_config(overrides: dict):
    """experiments/s2-pretrain-pool.yaml with dotted-key overrides."""
    import yaml

    from medmtl.config import parse_config, set_dotted

    raw = yaml.safe_load((REPO / "experiments" / "s2-pretrain-pool.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return parse_config(raw, "s2 test config")


def _spec(name: str, k: int):
    from medmtl.data.pipeline import TaskSpec

    return TaskSpec(name=name, kind="binary", classes=tuple(str(i) for i in range(k)), target="class", source="x")
