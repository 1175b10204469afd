"""Study sections of the report on a purposely made results dir: the reference table (ours vs
published, from metrics.json and from history.csv), the comparisons (DeLong, Holm, verdict in words),
the data/leakage table and the best-epoch training table; and the applications of an experiment."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from medmtl.config import parse_config
from medmtl.errors import ConfigError
from medmtl.reports import write_report

N = 200


def _scores(y: np.ndarray, strength: float, rng) -> np.ndarray:
    s = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(0, 1, len(y)))))
    return np.stack([1 - s, s], axis=1)


def _task(name, role="main"):
    return {"name": name, "kind": "binary", "classes": ["neg", "pos"], "target": "class", "role": role,
            "reader": {"name": "folder", "root": "."}}


@pytest.fixture()
def run_dir(tmp_path):
    """Three arms; 'good' separates the classes far better than 'weak' and 'same' (two seeds each)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    frames, metrics = [], {}
    for arm, strength in (("good", 3.0), ("weak", 0.3), ("same", 0.3)):
        for seed in (0, 1):
            p = _scores(y, strength, rng)
            frames.append(pd.DataFrame({"arm": arm, "seed": seed, "task": "main", "split": "test",
                                        "id": [f"i{k}" for k in range(N)], "group": [f"i{k}" for k in range(N)],
                                        "y_true": y, "score_neg": p[:, 0], "score_pos": p[:, 1]}))
            from sklearn.metrics import roc_auc_score

            metrics.setdefault(arm, {})[str(seed)] = {"main": {"test": {"auc": roc_auc_score(y, p[:, 1])},
                                                              "val": {"accuracy": 0.5 + 0.1 * seed}}}
        hist_dir = tmp_path / "arms" / arm / "seed0"
        hist_dir.mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2, 3], "train_loss/main": [0.9, 0.5, 0.4], "train_accuracy/main": [0.6, 0.8, 0.9],
                      "val_cross_entropy/main": [0.8, 0.6, 0.7], "val_accuracy/main": [0.5, 0.7, 0.65],
                      "val_auc/main": [0.6, 0.8, 0.75]}).to_csv(hist_dir / "history.csv", index=False)
        (hist_dir / "metrics.json").write_text(json.dumps({"best_epoch": 2}))
    (tmp_path / "results").mkdir()
    pd.concat(frames).to_csv(tmp_path / "results" / "predictions.csv", index=False)
    (tmp_path / "results" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "results" / "data.json").write_text(json.dumps({
        "main": {"kind": "binary", "splits": {"train": {"neg": 50, "pos": 40}, "val": {"neg": 5, "pos": 5},
                                              "test": {"neg": 100, "pos": 100}}, "groups": 300,
                 "cross_duplicates": {"other": 7}, "excluded_from_training": {"other": 3},
                 "removed_from_training": 3, "skipped": 2}}))
    config = {"name": "made", "tasks": [_task("main")], "experiment": {
        "main_task": "main", "seeds": [0, 1],
        "arms": [{"name": "good", "strategy": "mtl"}, {"name": "weak", "strategy": "stl"},
                 {"name": "same", "strategy": "stl"}],
        "comparisons": [["good", "weak"], ["weak", "same"]],
        "reference": {"source": "a made-up paper", "note": "different data", "values": [
            {"label": "test AUC of good", "arm": "good", "task": "main", "published": 0.9},
            {"label": "val accuracy in percent", "arm": "good", "task": "main", "split": "val",
             "metric": "accuracy", "published": 60.0, "scale": 100},
            {"label": "train accuracy at best epoch", "arm": "good", "task": "main", "split": "train",
             "metric": "accuracy", "published": 85.0, "scale": 100, "read_from": "history"},
            {"label": "absent arm", "arm": "nowhere", "task": "main", "published": 0.5}]}}}
    parse_config(config, "test")   # the made config is a valid one
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def _sections(run_dir):
    write_report(run_dir, tsne=False, gradcam=False, n_boot=100)
    doc = json.loads((run_dir / "report" / "results.json").read_text())
    return doc, (run_dir / "report" / "results.md").read_text(), (run_dir / "report" / "report.html").read_text()


def test_reference_table_sets_ours_beside_published(run_dir):
    doc, md, html = _sections(run_dir)
    rows = {r["quantity"]: r for r in doc["sections"]["reference"]["table"]}
    good = json.loads((run_dir / "results" / "metrics.json").read_text())["good"]
    assert rows["test AUC of good"]["ours (mean)"] == pytest.approx(np.mean([good[s]["main"]["test"]["auc"] for s in "01"]))
    assert rows["val accuracy in percent"]["ours (mean)"] == pytest.approx(55.0)   # (0.5 + 0.6) / 2 x 100
    assert rows["train accuracy at best epoch"]["ours (mean)"] == pytest.approx(80.0)  # epoch 2 of history
    assert rows["absent arm"]["seeds"] == 0
    assert any("absent arm" in n for n in doc["notes"])
    assert "Reference values: ours vs published" in md and "a made-up paper" in html


def test_comparisons_test_pairs_and_say_the_outcome(run_dir):
    doc, md, _ = _sections(run_dir)
    rows = {r["comparison"]: r for r in doc["sections"]["comparisons"]["table"]}
    good_weak, weak_same = rows["good vs weak"], rows["weak vs same"]
    assert good_weak["test"] == "DeLong paired" and good_weak["p (Holm)"] < 0.001
    assert good_weak["verdict"].startswith("good better than weak; this compares the two models trained with seed 0,"
                                           " not the two methods (2 seeds; a verdict on the methods needs 3)")
    assert good_weak["level"] == "model"
    # Holm over the table's two rows: the smaller p doubled, the larger kept (and never below the first)
    ps = sorted((good_weak["p"], weak_same["p"]))
    holm_small, holm_large = min(1.0, 2 * ps[0]), max(min(1.0, 2 * ps[0]), ps[1])
    assert good_weak["p (Holm)"] == pytest.approx(holm_small) and weak_same["p (Holm)"] == pytest.approx(holm_large)
    assert weak_same["verdict"].startswith("no significant difference")
    # the 2-std rule from the two seeds' test AUCs of metrics.json, worked out here
    metrics = json.loads((run_dir / "results" / "metrics.json").read_text())
    for row, (a, b) in ((good_weak, ("good", "weak")), (weak_same, ("weak", "same"))):
        xa, xb = ([metrics[arm][s]["main"]["test"]["auc"] for s in ("0", "1")] for arm in (a, b))
        rule = abs(np.mean(xa) - np.mean(xb)) > 2 * max(np.std(xa, ddof=1), np.std(xb, ddof=1))
        assert row["seeds"] == 2 and row["2-std rule"] == ("significant" if rule else "not significant")
    assert good_weak["2-std rule"] == "significant"            # AUC ~0.98 against ~0.6: no seed noise hides it
    assert "Wilcoxon p (Holm)" in good_weak
    # power: 200 test images, a small seed spread: detectable differences of a few hundredths, not 0, not 1;
    # weak and same are the same recipe, so their difference lies below what 200 images can detect
    assert 0.01 < weak_same["detectable difference"] < 0.3
    assert abs(weak_same["difference"]) < weak_same["detectable difference"]
    assert "underpowered: only differences of" in weak_same["verdict"]


def test_comparisons_resample_patients_when_images_share_them(run_dir):
    """Four images per patient: the paired test and the AUC CI resample whole patients, not images."""
    path = run_dir / "results" / "predictions.csv"
    pred = pd.read_csv(path)
    pred["group"] = "p" + (pred["id"].str[1:].astype(int) // 4).astype(str)
    pred.to_csv(path, index=False)
    doc, _, _ = _sections(run_dir)
    rows = {r["comparison"]: r for r in doc["sections"]["comparisons"]["table"]}
    assert rows["good vs weak"]["test"] == "paired bootstrap (1000, over 50 groups)"
    table = {(r["arm"], r["task"]): r for r in doc["rows"]}
    assert table[("good", "main")]["metrics"]["auc"]["ci_method"].startswith("grouped bootstrap (100, 50 groups")


def test_a_constant_model_gets_no_verdict(run_dir):
    path = run_dir / "results" / "predictions.csv"
    pred = pd.read_csv(path)
    pred.loc[pred.arm == "weak", ["score_neg", "score_pos"]] = 0.5
    pred.to_csv(path, index=False)
    doc, _, _ = _sections(run_dir)
    rows = {r["comparison"]: r for r in doc["sections"]["comparisons"]["table"]}
    assert rows["good vs weak"]["verdict"].startswith("degenerate, no verdict: the scores are constant")


def test_data_and_training_sections(run_dir):
    doc, md, _ = _sections(run_dir)
    data = doc["sections"]["data"]["table"][0]
    assert (data["train"], data["val"], data["test"]) == (87, 10, 200)     # 90 less the 3 the guard removed
    assert data["copies in other tasks"] == "other: 7"
    assert data["removed from training (copies of evaluation images)"] == "other: 3"
    train = {r["arm"]: r for r in doc["sections"]["training"]["table"]}
    assert train["good"]["best epoch"] == 2 and train["good"]["val loss"] == pytest.approx(0.6)


def test_a_failing_section_becomes_a_note(run_dir):
    (run_dir / "results" / "data.json").write_text("{not json")
    doc, _, _ = _sections(run_dir)
    assert "data" not in doc["sections"]
    assert any("section 'data' not written" in n for n in doc["notes"])


def test_application_config_narrows_tasks_and_fills_multitask_arms():
    from medmtl.protocols.applications import application_config

    raw = {"name": "apps", "tasks": [_task("a"), _task("a_aux", "auxiliary"), _task("b"), _task("b_aux", "auxiliary")],
           "experiment": {"arms": [{"name": "mtl", "strategy": "mtl"}, {"name": "stl", "strategy": "stl"}],
                          "applications": {
                              "first": {"main_task": "a", "tasks": ["a", "a_aux"], "overrides": {"train.epochs": 3}},
                              "second": {"main_task": "b", "tasks": ["b", "b_aux", "missing"]}}}}
    cfg = parse_config(raw, "test")
    first = application_config(cfg, "first", cfg.experiment.applications["first"])
    assert [t.name for t in first.tasks] == ["a", "a_aux"]
    assert first.experiment.main_task == "a" and first.train.epochs == 3
    assert first.experiment.arms[0].tasks == ["a", "a_aux"] and first.experiment.arms[1].tasks is None
    with pytest.raises(ConfigError, match=r"experiment.applications.second: tasks \['missing'\] are not declared"):
        application_config(cfg, "second", cfg.experiment.applications["second"])


def test_experiment_needs_a_main_task_and_known_comparison_arms():
    raw = {"name": "x", "tasks": [_task("a")], "experiment": {"arms": [{"name": "m", "strategy": "mtl"}]}}
    with pytest.raises(Exception, match="experiment needs main_task"):
        parse_config(raw, "test")
    raw["experiment"].update(main_task="a", comparisons=[["m", "z"]])
    with pytest.raises(Exception, match=r"comparisons name arms \['z'\]"):
        parse_config(raw, "test")


def test_three_seeds_make_a_method_level_verdict(run_dir):
    """With a third seed the comparison is about the methods, and the verdict says what the seeds show."""
    path = run_dir / "results" / "metrics.json"
    metrics = json.loads(path.read_text())
    for arm, auc in (("good", 0.95), ("weak", 0.6), ("same", 0.61)):
        metrics[arm]["2"] = {"main": {"test": {"auc": auc}}}
    path.write_text(json.dumps(metrics))
    doc, _, _ = _sections(run_dir)
    rows = {r["comparison"]: r for r in doc["sections"]["comparisons"]["table"]}
    good_weak = rows["good vs weak"]
    assert good_weak["seeds"] == 3 and good_weak["level"] == "method"
    assert "over the 3 seeds the mean difference is +" in good_weak["verdict"]
    assert "not the two methods" not in good_weak["verdict"]


def test_comparisons_may_name_the_loto_arms_when_loto_runs():
    """s2 compares the multi-task trunk with ImageNet: the LOTO arms exist only with a loto section."""
    raw = {"name": "x", "tasks": [_task("a"), _task("b")],
           "experiment": {"main_task": "a", "arms": [{"name": "fe", "strategy": "feature_extraction"}],
                          "comparisons": [["loto_feature_extraction", "fe"]]}}
    with pytest.raises(Exception, match=r"comparisons name arms \['loto_feature_extraction'\] that are not"):
        parse_config(raw, "test")
    cfg = parse_config({**raw, "loto": {"pool": ["a", "b"], "transfer": ["feature_extraction"]}}, "test")
    assert cfg.loto.arm_names() == ["loto_feature_extraction"]
    raw["experiment"]["comparisons"] = [["loto_joint", "fe"]]
    with pytest.raises(Exception, match=r"\['loto_joint'\] that are not in experiment.arms or the LOTO arms"):
        parse_config({**raw, "loto": {"pool": ["a", "b"]}}, "test")
