"""A comparison of every strategy on real data (tiny settings): the results layout and resuming."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from medmtl.config import parse_config
from medmtl.protocols import STRATEGIES, run_experiment
from tests.test_engine import _cfg


def _experiment(tmp_path, cache):
    _, raw = _cfg(tmp_path, cache, epochs=2)
    raw["run_dir"] = str(tmp_path / "exp")
    raw["experiment"] = {
        "main_task": "breastmnist", "seeds": [0], "tta": True,
        "arms": [
            {"name": "stl", "strategy": "stl"},
            {"name": "mtl", "strategy": "mtl", "tasks": ["breastmnist", "retinamnist"]},
            {"name": "tl", "strategy": "sequential", "source": ["retinamnist"],
             "head": {"name": "transfer", "kwargs": {"hidden_features": 32}}},
            {"name": "fe", "strategy": "feature_extraction", "source_arm": "mtl", "svm_c": [0.01, 1.0]},
            {"name": "ft", "strategy": "finetune", "source_arm": "stl", "lrs": [0.01, 0.001]},
            {"name": "fs", "strategy": "freeze_sweep", "source_arm": "stl", "freeze": [0, 1]},
        ],
    }
    raw["quick"] = {"train.epochs": 1}
    return parse_config(raw)


def test_strategy_registry_is_pinned():
    assert STRATEGIES.list() == ["feature_extraction", "finetune", "freeze_sweep", "joint", "mtl", "scratch",
                                 "sequential", "stl"]


def test_every_strategy_writes_the_results_layout(tmp_path, shared_cache, monkeypatch):
    cfg = _experiment(tmp_path, shared_cache)
    out = run_experiment(cfg, quick=True, progress=False)
    pred = pd.read_csv(out / "results/predictions.csv")
    arms = set(pred["arm"])
    assert arms == {"stl", "mtl", "tl", "fe", "ft", "fs/freeze=0", "fs/freeze=1"}
    # with TTA, validation is scored as test is, and once more without TTA (val_no_tta)
    assert set(pred["split"]) == {"val", "test", "val_no_tta"} and set(pred["task"]) == {"breastmnist"}
    for arm in arms:
        val, plain = (pred[(pred.arm == arm) & (pred.split == s)].set_index("id") for s in ("val", "val_no_tta"))
        assert sorted(val.index) == sorted(plain.index)
        # the 8 views change every arm's scores (a network is not invariant to flips and rotations)
        assert (val["score_malignant"] - plain.loc[val.index, "score_malignant"]).abs().max() > 1e-4, arm
    n_test = len(pred[(pred.arm == "stl") & (pred.split == "test")])
    assert all(len(pred[(pred.arm == a) & (pred.split == "test")]) == n_test for a in arms)
    assert list(pred.columns) == ["arm", "seed", "task", "split", "id", "group", "y_true",
                                  "score_malignant", "score_benign_or_normal"]
    assert ((pred["score_malignant"] + pred["score_benign_or_normal"]) - 1).abs().max() < 1e-5
    metrics = json.loads((out / "results/metrics.json").read_text())
    assert 0.0 <= metrics["mtl"]["0"]["breastmnist"]["test"]["auc"] <= 1.0
    # quick mode: one epoch per training run
    hist = pd.read_csv(out / "arms/stl/seed0/history.csv")
    assert len(hist) == 1
    # the sequential arm trained a source model on retinamnist, then the target from its trunk
    tl_cfg = (out / "arms/tl/seed0/target/config.yaml").read_text()
    assert "source/checkpoints/best.ckpt" in tl_cfg and "transfer" in tl_cfg
    # the audit: every model's best epoch, the learning rate and the SVM's C, none reading test;
    # every test scoring is of a final model (one per arm model and seed)
    doc = json.loads((out / "results/audit.json").read_text())
    kinds = {d["what"] for d in doc["decisions"]}
    assert {"best_epoch", "learning_rate", "svm_c"} <= kinds and doc["problems"] == []
    assert all(r["split"] != "test" for d in doc["decisions"] for r in d["reads"])
    assert {d["for"]["arm"] for d in doc["decisions"] if d["what"] == "best_epoch"} == {"stl", "mtl", "tl", "ft", "fs"}
    assert {d["reads"][0]["split"] for d in doc["decisions"] if d["what"] == "svm_c"} == {"train"}
    assert sorted(s["model"] for s in doc["test_scores"]) == sorted(arms) and all(s["final"] for s in doc["test_scores"])

    # the report compares each model's validation with and without TTA
    from medmtl.reports import write_report
    from medmtl.reports.section_tta import tta_rows

    rows = tta_rows(metrics)
    assert {r["arm"] for r in rows} == arms
    for r in rows:
        on = metrics[r["arm"]]["0"]["breastmnist"]["val"]["auc"]
        assert r["val auc with TTA"] == on and r["val auc without"] == metrics[r["arm"]]["0"]["breastmnist"]["val_no_tta"]["auc"]
        assert r["hurts"] == (r["val auc with TTA"] < r["val auc without"] - 0.005)
    report = json.loads((write_report(out, tsne=False, gradcam=False).parent / "results.json").read_text())
    tta = report["sections"]["tta"]["data"]
    assert tta["n_hurt"] == sum(r["hurts"] for r in rows)
    for r in tta["rows"]:         # the mean positive-class score of predictions.csv
        plain = pred[(pred.arm == r["arm"]) & (pred.split == "val_no_tta")]["score_benign_or_normal"].mean()
        assert r["val mean score without"] == pytest.approx(plain)
        assert r["shifts scores"] == (abs(r["val mean score with TTA"] - plain) > 0.05)

    # a rerun trains nothing again
    monkeypatch.setattr(STRATEGIES, "get", lambda name, *a: pytest.fail(f"strategy {name} ran again"))
    again = run_experiment(cfg, quick=True, progress=False)
    assert pd.read_csv(again / "results/predictions.csv").shape == pred.shape


def test_unknown_main_task_is_a_config_error(tmp_path, shared_cache):
    from medmtl.errors import ConfigError

    cfg = _experiment(tmp_path, shared_cache)
    cfg.experiment.main_task = "busi"
    with pytest.raises(ConfigError, match=r"experiment.main_task: 'busi' is not a declared task"):
        run_experiment(cfg, progress=False)


def test_group_level_scores_are_the_mean_of_their_images():
    from medmtl.evaluation.groups import aggregate_groups

    rows = pd.DataFrame({"group": ["a", "a", "b"], "y_true": [1, 1, 0], "score_0": [0.2, 0.4, 0.9],
                         "score_1": [0.8, 0.6, 0.1]})
    agg = aggregate_groups(rows, ["score_0", "score_1"])
    assert agg.set_index("group")["score_1"].to_dict() == pytest.approx({"a": 0.7, "b": 0.1})
    with pytest.raises(ValueError, match=r"groups \['a'\] hold images of different classes"):
        aggregate_groups(rows.assign(y_true=[1, 0, 0]), ["score_0", "score_1"])


def test_cross_validation_on_a_representative_split(tmp_path, shared_cache):
    """4-fold case-grouped CV of BUSI-like data: candidates tried, one chosen, every image tested once."""
    _, raw = _cfg(tmp_path, shared_cache, epochs=1)
    raw["run_dir"] = str(tmp_path / "cv")
    raw["tasks"] = raw["tasks"][:1]
    raw["experiment"] = {"main_task": "breastmnist", "seeds": [0],
                         "arms": [{"name": "stl", "strategy": "stl"},
                                  {"name": "fe", "strategy": "feature_extraction", "svm_c": [1.0]}],
                         "cv": {"n_splits": 2, "candidates": 2, "criterion": "reference", "reference_arm": "stl"}}
    out = run_experiment(parse_config(raw), progress=False)
    chosen = json.loads((out / "cv/candidates.json").read_text())
    assert set(chosen["candidates"]) == {"0", "1"} and chosen["chosen"] in (0, 1)
    stds = {k: v["std"] for k, v in chosen["candidates"].items()}
    assert stds[str(chosen["chosen"])] == min(stds.values())
    # candidates are scored on validation only and kept apart; the chosen folds' models are trained afresh
    candidate_preds = [pd.read_csv(p) for p in (out / "cv/candidates").rglob("predictions.csv")]
    assert len(candidate_preds) == 4 and all(set(p["split"]) == {"val"} for p in candidate_preds)
    doc = json.loads((out / "results/audit.json").read_text())
    assert [d["chose"] for d in doc["decisions"] if d["what"] == "cv_split"] == [chosen["chosen"]]
    assert doc["problems"] == [] and all(s["final"] for s in doc["test_scores"])
    pred = pd.read_csv(out / "results/predictions.csv")
    test = pred[(pred.split == "test") & (pred.arm == "stl")]
    assert set(test["fold"]) == {0, 1}
    assert test["id"].is_unique and len(test) == 780      # all BreastMNIST images, each tested once


def test_arms_run_as_parallel_trials_in_dependency_waves(tmp_path, shared_cache, monkeypatch):
    """``--workers 2``: arms x seeds as Ray trials, source arms in an earlier wave, same scores as a
    sequential run, and a second run trains nothing again."""
    from medmtl.protocols.comparison import waves

    cfg = _experiment(tmp_path, shared_cache)
    raw = cfg.model_dump(mode="json")
    raw["experiment"]["tta"] = False
    raw["experiment"]["seeds"] = [0, 1]
    raw["experiment"]["arms"] = [a for a in raw["experiment"]["arms"] if a["name"] in ("stl", "mtl", "fe")]
    par = parse_config({**raw, "run_dir": str(tmp_path / "par")})
    seq = parse_config({**raw, "run_dir": str(tmp_path / "seq")})
    assert [[a.name for a in w] for w in waves(par.experiment.arms)] == [["stl", "mtl"], ["fe"]]
    out = run_experiment(par, quick=True, progress=False, workers=2)
    trials = sorted(p.name for p in (out / "grid" / "trials").iterdir())
    assert trials == ["fe-seed0", "fe-seed1", "mtl-seed0", "mtl-seed1", "stl-seed0", "stl-seed1"]
    assert all((out / "grid" / "trials" / t / "result.json").is_file() for t in trials)
    ref = run_experiment(seq, quick=True, progress=False)
    cols = ["score_malignant", "score_benign_or_normal"]
    a = pd.read_csv(out / "results/predictions.csv").sort_values(["arm", "seed", "split", "id"])
    b = pd.read_csv(ref / "results/predictions.csv").sort_values(["arm", "seed", "split", "id"])
    assert list(a["id"]) == list(b["id"])
    assert abs(a[cols].to_numpy() - b[cols].to_numpy()).max() < 1e-3
    stamp = (out / "arms/stl/seed0/done.json").stat().st_mtime_ns
    run_experiment(par, quick=True, progress=False, workers=2)           # everything finished: nothing runs
    assert (out / "arms/stl/seed0/done.json").stat().st_mtime_ns == stamp


def test_the_same_command_twice_gives_the_same_metrics(tmp_path, shared_cache):
    """Two runs of one config into two run dirs, on this machine: the same results/metrics.json,
    number for number (a verdict that moved between them would mean nothing)."""
    _, raw = _cfg(tmp_path, shared_cache, epochs=1)
    raw["tasks"] = raw["tasks"][:1]
    raw["experiment"] = {"main_task": "breastmnist", "seeds": [0],
                         "arms": [{"name": "stl", "strategy": "stl"},
                                  {"name": "fe", "strategy": "feature_extraction", "source_arm": "stl",
                                   "svm_c": [1.0]}]}
    docs = []
    for name in ("first", "second"):
        out = run_experiment(parse_config({**raw, "run_dir": str(tmp_path / name)}), progress=False)
        docs.append((out / "results" / "metrics.json").read_text())
    assert docs[0] == docs[1]
    metrics = json.loads(docs[0])
    assert set(metrics) == {"stl", "fe"} and "threshold_youden" in metrics["stl"]["0"]["breastmnist"]["test"]


def test_cv_split_by_balance_trains_nothing_to_choose(tmp_path, shared_cache):
    """The default criterion: the candidate whose test folds keep the class mix and even sizes best,
    chosen without a model (it cannot favour an arm); a compared arm cannot be the reference."""
    from medmtl.errors import ConfigError
    from medmtl.protocols import check_config

    _, raw = _cfg(tmp_path, shared_cache, epochs=1)
    raw["run_dir"] = str(tmp_path / "cvb")
    raw["tasks"] = raw["tasks"][:1]
    raw["experiment"] = {"main_task": "breastmnist", "seeds": [0], "arms": [{"name": "stl", "strategy": "stl"}],
                         "cv": {"n_splits": 2, "candidates": 3}}
    out = run_experiment(parse_config(raw), progress=False)
    chosen = json.loads((out / "cv/candidates.json").read_text())
    scores = {int(k): v["score"] for k, v in chosen["candidates"].items()}
    assert chosen["criterion"] == "balance" and chosen["chosen"] == min(scores, key=lambda k: (scores[k], k))
    assert all(len(v["per_fold"]) == 2 for v in chosen["candidates"].values())
    assert not (out / "cv" / "candidates").exists()                     # no candidate model trained
    (split,) = [d for d in json.loads((out / "results/audit.json").read_text())["decisions"]
                if d["what"] == "cv_split"]
    assert split["reads"] == [{"task": "breastmnist", "split": "all", "as": "class counts"}]
    raw["experiment"]["arms"].append({"name": "mtl", "strategy": "mtl", "tasks": ["breastmnist"]})
    raw["experiment"]["cv"] = {"n_splits": 2, "candidates": 2, "criterion": "reference", "reference_arm": "stl"}
    with pytest.raises(ConfigError, match=r"experiment\.cv\.reference_arm: 'stl' is compared"):
        check_config(parse_config(raw))


class _OneSource:
    """What ``_fit_svm`` reads of the data: each training row's patient."""

    def __init__(self, groups):
        self.groups = groups

    def source_of(self, task):
        return self


class _Items:
    def __init__(self, n):
        import numpy as np

        self.items_ = np.stack([np.zeros(n, int), np.zeros(n, int), np.arange(n)], axis=1)


def test_svm_c_that_gives_constant_scores_is_not_chosen():
    """C=1e-10 on standardised features ranks by rounding noise (the issue's 0.5 +- 1e-7 scores): it is
    no candidate even where its cross-validated AUC ties or beats a real C; a grid of only such Cs is
    marked degenerate."""
    import numpy as np

    from medmtl.protocols.strategies import _fit_svm

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    x = rng.normal(size=(120, 8)) + y[:, None] * 0.8       # separable enough that every C ranks well
    data, items = _OneSource(np.arange(120) // 2), _Items(120)
    clf, c, record = _fit_svm((x[None], y), data, items, "t", [1e-10, 1.0], seed=0)
    assert c == 1.0 and record["excluded"] == [1e-10] and not record["degenerate"]
    assert np.std(clf.decision_function(x)) > 0.1
    clf, c, record = _fit_svm((x[None], y), data, items, "t", [1e-12, 1e-10], seed=0)
    assert record["degenerate"] and record["excluded"] == [1e-12, 1e-10]


def test_svm_c_folds_that_miss_a_class_are_scored_on_the_classes_they_have():
    """Three classes, the rarest held by one patient: some fold trains without it (its SVM knows two
    classes) or tests without it. The CV for C scores what each fold can score instead of failing."""
    import numpy as np

    from medmtl.protocols.strategies import _fit_svm, _fold_auc

    rng = np.random.default_rng(0)
    y = np.array([0] * 40 + [1] * 40 + [2] * 3)
    x = rng.normal(size=(83, 6)) + y[:, None]
    groups = np.concatenate([np.arange(80) // 2, [99, 99, 99]])
    clf, c, record = _fit_svm((x[None], y), _OneSource(groups), _Items(83), "t", [0.01, 1.0], seed=0)
    assert c in (0.01, 1.0) and all(np.isfinite(v) for v in record["cv_auc"].values())
    assert _fold_auc(np.array([0, 1, 2]), np.array([0.1, 0.9, 0.5]), np.array([0, 1])) == 1.0   # 2 of 3 learned
    assert np.isnan(_fold_auc(np.array([1, 1]), np.array([0.1, 0.9]), np.array([0, 1])))


def test_svm_fold_auc_is_sklearns_when_every_class_is_present():
    """The C grid's fold score did not change for the usual case: sklearn's macro one-vs-rest AUC of the
    softmax of the decision values (multiclass), the AUC of the decision values (binary)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from medmtl.protocols.strategies import _fold_auc, _softmax

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    d = rng.normal(size=(200, 3)) + np.eye(3)[y]
    assert _fold_auc(y, d, np.arange(3)) == pytest.approx(roc_auc_score(y, _softmax(d), multi_class="ovr"))
    y2 = rng.integers(0, 2, 200)
    d2 = rng.normal(size=200) + y2
    assert _fold_auc(y2, d2, np.arange(2)) == pytest.approx(roc_auc_score(y2, d2))


def test_an_arm_stopped_mid_training_continues_from_its_last_epoch(tmp_path, shared_cache, monkeypatch, caplog):
    """A run killed inside an arm's training loses no finished epoch: the re-run continues from the
    arm's last checkpoint (same config), and ends with the weights of an uninterrupted run."""
    import logging

    from medmtl.engine import checkpoint as ckpt
    from medmtl.engine import loop

    def experiment(run_dir):
        _, raw = _cfg(tmp_path, shared_cache, epochs=2)
        raw["run_dir"] = str(run_dir)
        raw["experiment"] = {"main_task": "breastmnist", "seeds": [0], "arms": [{"name": "stl", "strategy": "stl"}]}
        return parse_config(raw)

    whole = run_experiment(experiment(tmp_path / "whole"), progress=False)
    calls = {"n": 0}
    validate = loop.Trainer.validate

    def killed_in_epoch_2(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return validate(self)

    monkeypatch.setattr(loop.Trainer, "validate", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(experiment(tmp_path / "cut"), progress=False)
    arm = tmp_path / "cut" / "arms" / "stl" / "seed0"
    first = pd.read_csv(arm / "history.csv")
    assert len(first) == 1 and not (arm / "done.json").exists()
    monkeypatch.setattr(loop.Trainer, "validate", validate)
    with caplog.at_level(logging.INFO, logger="medmtl.protocols"):
        run_experiment(experiment(tmp_path / "cut"), progress=False)
    assert any("continuing the interrupted training" in r.getMessage() for r in caplog.records)
    hist = pd.read_csv(arm / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and hist["seconds"][0] == first["seconds"][0]   # epoch 1 not re-trained
    a = ckpt.load(whole / "arms" / "stl" / "seed0" / "checkpoints" / "last.ckpt")["model"]
    b = ckpt.load(arm / "checkpoints" / "last.ckpt")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)

    # another config in the same arm dir: its checkpoint is not continued but removed, and trained afresh
    (arm / "done.json").unlink()
    changed = experiment(tmp_path / "cut").model_dump(mode="json")
    changed["train"]["optimizer"]["lr"] = 0.01
    monkeypatch.setattr(loop.Trainer, "validate", killed_in_epoch_2)
    calls["n"] = 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medmtl.protocols"), pytest.raises(KeyboardInterrupt):
        run_experiment(parse_config(changed), progress=False)
    assert any("checkpoint is of another config" in r.getMessage() for r in caplog.records)
    assert ckpt.load(arm / "checkpoints" / "last.ckpt")["epoch"] == 1     # the new config's first epoch
    assert pd.read_csv(arm / "history.csv")["seconds"][0] != hist["seconds"][0]
