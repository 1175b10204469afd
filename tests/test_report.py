"""``medmtl.reports`` on a real results dir: two arms trained on MedMNIST, their test predictions,
the results tables, and the HTML page rendered in headless Chromium (every figure must load)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from medmtl.config import parse_config
from medmtl.evaluation.stats import bootstrap_auc_ci, paired_bootstrap_test
from medmtl.reports import write_predictions, write_report
from tests.conftest import need_data

ARMS = {"mtl_mean": "mean", "mtl_uncertainty": "uncertainty"}   # arm -> loss weighting
TASKS = ("breastmnist", "retinamnist")


def _config(run_dir, cache, weighting: str) -> dict:
    return {
        "name": "report", "seed": 0, "cache_dir": str(cache), "run_dir": str(run_dir),
        "tasks": [
            {"name": "breastmnist", "kind": "binary", "classes": ["malignant", "benign_or_normal"], "target": "label",
             "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/breastmnist.npz"},
             "image": {"size": 28, "mode": "L"}, "split": {"method": "official"}},
            {"name": "retinamnist", "kind": "ordinal", "classes": ["0", "1", "2", "3", "4"], "target": "label",
             "role": "auxiliary", "domain": "fundus",
             "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/retinamnist.npz"},
             "image": {"size": 28, "mode": "RGB"}, "split": {"method": "official"}},
        ],
        "leakage": {"policy": "off"},
        "data": {"batch_size": 32, "size": 28, "limit_train": 64, "limit_eval": 64},
        "model": {"trunk": {"name": "test_tiny"}},
        "train": {"epochs": 2, "optimizer": {"lr": 0.05}, "weighting": {"name": weighting}, "mlflow": False},
    }


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, shared_cache):
    """An experiment dir in the results layout: arms/<arm>/seed0 runs, predictions.csv, config.yaml."""
    from medmtl.api import train

    need_data("medmnist")
    root = tmp_path_factory.mktemp("experiment")
    for arm, weighting in ARMS.items():
        train(parse_config(_config(root / "arms" / arm / "seed0", shared_cache, weighting)), progress=False)
        write_predictions(root / "arms" / arm / "seed0", arm, 0, "test", root / "results" / "predictions.csv")
    cfg = yaml.safe_load((root / "arms" / "mtl_mean" / "seed0" / "config.yaml").read_text())
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def report(results_dir):
    return write_report(results_dir, n_boot=200)


def test_predictions_follow_the_results_layout(results_dir):
    pred = pd.read_csv(results_dir / "results" / "predictions.csv")
    assert list(pred.columns[:7]) == ["arm", "seed", "task", "split", "id", "group", "y_true"]
    assert set(pred["arm"]) == set(ARMS) and set(pred["task"]) == set(TASKS) and set(pred["split"]) == {"test"}
    bm = pred[(pred.task == "breastmnist") & (pred.arm == "mtl_mean")]
    assert len(bm) == 156                        # the official BreastMNIST test split, scored in full
    probs = bm[["score_malignant", "score_benign_or_normal"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert bm[["score_0", "score_1"]].isna().all().all()   # another task's classes stay empty
    # a second call for the same arm/seed/split replaces its rows instead of appending
    before = len(pred)
    write_predictions(results_dir / "arms" / "mtl_mean" / "seed0", "mtl_mean", 0, "test",
                      results_dir / "results" / "predictions.csv")
    assert len(pd.read_csv(results_dir / "results" / "predictions.csv")) == before


def test_results_files_hold_both_arms_with_cis(report):
    out = report.parent
    doc = json.loads((out / "results.json").read_text())
    assert doc["arms"] == list(ARMS) and doc["seeds"] == [0] and doc["reference_seed"] == 0
    rows = {(r["arm"], r["task"]): r for r in doc["rows"]}
    assert set(rows) == {(a, t) for a in ARMS for t in TASKS}
    for r in rows.values():
        auc = r["metrics"]["auc"]
        assert r["n_seeds"] == 1 and r["seeds"] == [0]
        assert auc["ci_low"] <= auc["ref"] <= auc["ci_high"] and auc["ci_method"]
        assert auc["ref"] == pytest.approx(auc["mean"])          # one seed: its value is the mean
    assert rows[("mtl_uncertainty", "breastmnist")]["metrics"]["auc"]["p_value"] is not None
    assert rows[("mtl_mean", "breastmnist")]["metrics"]["auc"]["p_value"] is None   # the baseline
    table = pd.read_csv(out / "results.csv")
    assert set(table["arm"]) == set(ARMS)
    for col in ("auc_mean", "auc_std", "auc_ci_low", "auc_ci_high", "auc_p_value", "accuracy_mean",
                "accuracy_ci_low", "n_seeds", "seeds"):
        assert col in table.columns
    md = (out / "results.md").read_text()
    assert all(a in md for a in ARMS) and "| auc | accuracy |" in md and "95% CI" in md


def test_html_has_every_figure_kind(report):
    html = report.read_text()
    kinds = re.findall(r'data-kind="(\w+)"', html)
    counts = {k: kinds.count(k) for k in set(kinds)}
    assert counts["roc"] == 2                     # one per task, one curve per arm
    assert counts["curves"] == 2                  # one per arm
    assert counts["confusion"] == 2               # one per task, one panel per arm
    assert counts["tsne"] >= 2                    # one per trunk stage (test_tiny has two)
    assert counts["gradcam"] == 2                 # one per classification task
    assert html.count('src="data:image/png;base64,') == len(kinds)
    assert "http://" not in html and "https://" not in html   # self-contained
    assert 'id="comparison"' in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.title = "loaded " + ok + " of " + imgs.length;
});
</script>"""


def test_every_figure_loads_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs the Debian package `chromium`")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    page = tmp_path / "check.html"
    page.write_text(report.read_text().replace("</body>", CHECK + "</body>"))
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r"<title>loaded (\d+) of (\d+)</title>", proc.stdout)
    assert found, f"no result title in Chromium's DOM (rc {proc.returncode}): {proc.stderr[-2000:]}"
    ok, total = map(int, found.groups())
    assert total == report.read_text().count("<img ") and total > 0
    assert ok == total


# -- pieces on small synthetic inputs (edge cases the trained fixture does not reach) ------------
def test_bootstrap_auc_ci_matches_sklearn_and_brackets_it():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = y * 0.8 + rng.normal(0, 0.6, 300)
    auc, lo, hi = bootstrap_auc_ci(y, s, n_boot=300, random_state=1)
    assert auc == pytest.approx(roc_auc_score(y, s))
    assert lo < auc < hi and hi - lo < 0.2
    assert bootstrap_auc_ci(y, s, n_boot=300, random_state=1) == (auc, lo, hi)          # seeded
    probs = rng.dirichlet(np.ones(3), 300)
    y3 = rng.integers(0, 3, 300)
    assert bootstrap_auc_ci(y3, probs, n_boot=50)[0] == pytest.approx(
        np.mean([roc_auc_score(y3 == c, probs[:, c]) for c in range(3)]))
    assert all(np.isnan(bootstrap_auc_ci(np.zeros(10, int), s[:10])))          # one class: no AUC
    assert paired_bootstrap_test(y, s, s, n_boot=100) == 1.0               # identical models
    assert paired_bootstrap_test(y, s, rng.normal(size=300), n_boot=200) < 0.01


def test_one_arm_without_checkpoints_says_what_is_missing(tmp_path):
    """One arm, one seed, a multiclass and a segmentation task, no run dirs: the page explains
    every absent figure instead of leaving a silent gap."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    pred = pd.DataFrame({"arm": "stl", "seed": 0, "task": "tissue", "split": "test", "id": [f"i{k}" for k in range(60)],
                         "group": [f"g{k}" for k in range(60)], "y_true": y, **{f"score_{c}": probs[:, k] for k, c in enumerate("FGD")}})
    (tmp_path / "results").mkdir()
    pred.to_csv(tmp_path / "results" / "predictions.csv", index=False)
    metrics = {"stl": {"0": {"tissue": {"test": {"auc": 0.5, "accuracy": 0.3}},
                             "lesion_seg": {"test": {"dice": 0.61, "iou": 0.47}}}}}
    (tmp_path / "results" / "metrics.json").write_text(json.dumps(metrics))
    path = write_report(tmp_path, n_boot=50)
    html = path.read_text()
    kinds = re.findall(r'data-kind="(\w+)"', html)
    assert sorted(set(kinds)) == ["confusion", "roc"]
    assert "one arm only: no p-values" in html
    assert "no run dir arms/stl/seed0/" in html                        # why no t-SNE / Grad-CAM / curves
    assert "lesion_seg is segmentation: no ROC curve" in html
    doc = json.loads((path.parent / "results.json").read_text())
    seg = next(r for r in doc["rows"] if r["task"] == "lesion_seg")
    assert seg["metrics"]["dice"]["mean"] == pytest.approx(0.61) and seg["metrics"]["dice"]["ci_low"] is None
    assert "macro one-vs-rest" in next(r for r in doc["rows"] if r["task"] == "tissue")["metrics"]["auc"]["ci_method"]


def test_an_empty_directory_is_refused(tmp_path):
    from medmtl.errors import MedmtlError

    with pytest.raises(MedmtlError, match="holds no results"):
        write_report(tmp_path)


def test_cli_report_command(tmp_path):
    from typer.testing import CliRunner

    from medmtl.cli import app

    (tmp_path / "results").mkdir()
    pd.DataFrame({"arm": "a", "seed": 0, "task": "t", "split": "test", "id": ["x", "y", "z", "w"], "group": "g",
                  "y_true": [0, 1, 0, 1], "score_n": [.8, .3, .6, .1], "score_p": [.2, .7, .4, .9]}).to_csv(
        tmp_path / "results" / "predictions.csv", index=False)
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"report: {tmp_path / 'report' / 'report.html'}"
    bad = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "is not a directory" in bad.output


def test_group_evaluated_task_is_scored_per_group(tmp_path):
    """``evaluate_at: group``: CIs and p-values on one row per group (mean score), as metrics.json."""
    rng = np.random.default_rng(1)
    groups = np.repeat([f"p{k}" for k in range(40)], 2)
    y = np.repeat(rng.integers(0, 2, 40), 2)
    frames = []
    for arm, noise in (("base", 0.3), ("other", 0.6)):
        s = np.clip(y * 0.5 + rng.normal(0.25, noise, len(y)), 0, 1)
        frames.append(pd.DataFrame({"arm": arm, "seed": 0, "task": "lesion", "split": "test",
                                    "id": [f"i{k}" for k in range(len(y))], "group": groups, "y_true": y,
                                    "score_benign": 1 - s, "score_malignant": s}))
    (tmp_path / "results").mkdir()
    pd.concat(frames).to_csv(tmp_path / "results" / "predictions.csv", index=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"tasks": [
        {"name": "lesion", "kind": "binary", "classes": ["benign", "malignant"], "evaluate_at": "group"}]}))
    doc = json.loads((write_report(tmp_path, tsne=False, gradcam=False, n_boot=100).parent / "results.json").read_text())
    other = next(r for r in doc["rows"] if r["arm"] == "other")["metrics"]["auc"]
    assert "per group" in other["ci_method"] and "40 groups" in other["p_method"]
    frame = frames[1].groupby("group").agg({"y_true": "first", "score_malignant": "mean"})
    assert other["ref"] == pytest.approx(roc_auc_score(frame["y_true"], frame["score_malignant"]))
