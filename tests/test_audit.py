"""The selection audit: what it records, and that it refuses a decision that saw what it must not."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import medmtl.protocols.strategies as strategies
from medmtl.engine.loop import FitResult
from medmtl.evaluation import audit
from medmtl.evaluation.audit import AuditError, write_audit
from medmtl.protocols.loto import choose, forbidden_for, ranked_on, upstream_decisions


def _val(task):
    return audit.reads([task], "val")


def test_a_clean_audit_is_written_with_no_problems(tmp_path):
    doc = {"decisions": [audit.decision("best_epoch", arm="stl", seed=0, task="a", reads=_val("a"), chose=3,
                                        grid=[1, 2, 3, 4])],
           "test_scores": [audit.test_score("stl", 0, "a", final=True, why="selected")]}
    path = write_audit(tmp_path, doc)
    stored = json.loads(path.read_text())
    assert stored["problems"] == [] and stored["decisions"][0]["edge"] is False


@pytest.mark.parametrize("doc, message", [
    ({"decisions": [audit.decision("learning_rate", arm="ft", seed=1, task="a", reads=audit.reads(["a"], "test"),
                                   chose=0.01, grid=[0.1, 0.01])]},
     r"learning_rate for \{'arm': 'ft', 'seed': 1, 'task': 'a'\} read the test labels of 'a'"),
    ({"decisions": [audit.decision("loto_combination", arm="loto", seed="all", task="busi",
                                   reads=_val("breastmnist") + _val("retina"), chose="c1", grid=["c0", "c1"],
                                   forbidden={"busi", "breastmnist"})]},
     r"loto_combination for .*'busi'.* read 'breastmnist' \(val\), a task related to its target or holding copies"),
    ({"test_scores": [audit.test_score("mtl", 0, "busi", final=False, why="a CV candidate")]},
     r"test split of 'busi' scored for 'mtl' \(seed 0\), which is not a final model \(a CV candidate\)"),
])
def test_a_leaky_decision_fails_the_run_and_is_named(tmp_path, doc, message):
    with pytest.raises(AuditError, match=message):
        write_audit(tmp_path, doc)
    assert json.loads((tmp_path / "results" / "audit.json").read_text())["problems"]   # written for reading


def test_a_choice_at_the_edge_of_its_grid_is_flagged():
    d = lambda chose, grid: audit.decision("x", arm="a", seed=0, task="t", reads=[], chose=chose, grid=grid)  # noqa: E731
    assert d(1e-10, [10.0 ** k for k in range(-10, 1)])["edge"] is True
    assert d(1.0, [1e-4, 1e-2, 1.0])["edge"] is True
    assert d(1e-2, [1e-4, 1e-2, 1.0])["edge"] is False
    assert d(0.1, [0.1, 0.01])["edge"] is False           # two values: every choice is an edge, nothing to say
    assert d("c1", ["c0", "c1", "c2"])["edge"] is False    # no order among combinations


def test_loto_choice_excludes_the_related_group_and_copy_holders():
    # on the other tasks, combination "b" ranks best; counting breastmnist (copies of busi) would pick "a"
    ranks = pd.DataFrame({"busi": [2.0, 1.0], "breastmnist": [1.0, 2.0], "retina": [2.0, 1.0], "pcam": [1.0, 2.0],
                          "skin": [1.0, 2.0]}, index=["a", "b"])
    data = SimpleNamespace(leakage={"cross_duplicates": {"busi": {"skin": 3}, "skin": {"busi": 3},
                                                         "breastmnist": {}, "retina": {}, "pcam": {}}})
    forbidden = forbidden_for("busi", ["busi", "breastmnist"], data)
    assert forbidden == {"busi", "breastmnist", "skin"}
    assert ranked_on(ranks, "busi", forbidden) == ["retina", "pcam"]
    assert choose(ranks, "busi") == "a"                      # the leaky choice the old code made
    with pytest.raises(Exception, match="no left-out task is left"):
        choose(ranks[["busi", "breastmnist", "skin"]], "busi", forbidden)
    assert choose(ranks[["busi", "breastmnist", "skin", "retina"]], "busi", forbidden) == "b"


@pytest.mark.parametrize("mode, expected", [("max", 0.01), ("min", 0.1)])
def test_learning_rate_is_chosen_in_the_monitored_metrics_direction(tmp_path, monkeypatch, mode, expected):
    monitors = {0.1: 0.4, 0.01: 0.7, 0.001: 0.5}   # a loss is best at 0.4 (lr 0.1), an AUC at 0.7 (lr 0.01)

    def fake_train(ctx, tasks, run_dir, **kw):
        lr = kw["extra"]["train.optimizer.lr"]
        sel = {"reads": _val("a"), "chose": 2, "grid": [1, 2, 3], "mode": mode}
        ctx.decide("best_epoch", reads=sel["reads"], chose=2, grid=sel["grid"])
        return run_dir, FitResult(run_dir, 2, monitors[lr], {}, [], False, mode, sel)

    monkeypatch.setattr(strategies, "train_arm", fake_train)
    arm = SimpleNamespace(name="ft", lrs=[0.1, 0.01, 0.001])
    cfg = SimpleNamespace(experiment=SimpleNamespace(main_task="a"))
    ctx = strategies.ArmContext(cfg, arm, None, 0, tmp_path)
    outcome = strategies.lr_grid(ctx, None)
    assert outcome.runs[""].name == f"lr={expected:g}"
    chosen = [d for d in ctx.decisions if d["what"] == "learning_rate"]
    assert chosen[0]["chose"] == expected and chosen[0]["reads"] == _val("a") and not math.isnan(expected)


def test_test_metrics_at_the_validation_youden_threshold():
    """A model whose scores are all shifted up: at 0.5 it calls everything positive; the threshold
    chosen on validation recovers the separation, and the audit records that choice."""
    from medmtl.evaluation.scoring import at_validation_threshold, threshold_decisions

    rng = np.random.default_rng(0)
    def rows(n):
        y = rng.integers(0, 2, n)
        p = np.clip(0.7 + 0.2 * y + rng.normal(0, 0.03, n), 0, 1)      # every score above 0.5
        return pd.DataFrame({"y_true": y, "score_no": 1 - p, "score_yes": p})
    val, test = rows(80), rows(200)
    out = at_validation_threshold(val, test, ["score_no", "score_yes"])
    assert 0.7 < out["threshold_youden"] < 0.9
    assert out["sensitivity_youden"] > 0.9 and out["specificity_youden"] > 0.9 and out["f1_youden"] > 0.9
    assert out["balanced_accuracy_youden"] > 0.9
    one_class = at_validation_threshold(val.assign(y_true=1), test, ["score_no", "score_yes"])
    assert math.isnan(one_class["threshold_youden"]) and math.isnan(one_class["f1_youden"])
    metrics = {"stl": {"0": {"a": {"test": {"auc": 0.9, **out}, "val": {"auc": 0.9}}}}}
    (d,) = threshold_decisions(metrics)
    assert d["what"] == "threshold" and d["reads"] == _val("a") and d["chose"] == out["threshold_youden"]


def test_a_transferred_model_inherits_its_trunks_decisions_and_their_checks(tmp_path):
    """The trunk a LOTO target is transferred from chose its best epoch on the trial's tasks; that
    choice is re-checked for the target, so a trunk chosen on a copy-holding task fails the run."""
    trial = [audit.decision("best_epoch", arm="loto", seed=0, task="retina+pcam",
                            reads=_val("retina") + _val("pcam"), chose=4, grid=[1, 2, 3, 4, 5])]
    clean = upstream_decisions(trial, "busi", 0, {"breastmnist"}, "trials/busi/c0/seed0/model")
    assert clean[0]["for"] == {"arm": "loto (upstream trunk)", "seed": 0, "task": "busi"}
    assert clean[0]["via"] == "trials/busi/c0/seed0/model" and clean[0]["upstream_for"]["task"] == "retina+pcam"
    write_audit(tmp_path, {"decisions": clean})
    leaky = upstream_decisions(trial, "busi", 0, {"pcam"}, "trials/busi/c0/seed0/model")
    with pytest.raises(AuditError, match=r"best_epoch for .*'busi'.* read 'pcam' \(val\)"):
        write_audit(tmp_path, {"decisions": leaky})
