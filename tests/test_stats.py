"""Statistics: DeLong against R's pROC, bootstrap CIs, thresholds, repeated-seed rules, and the CLI."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medmtl.cli import app
from medmtl.evaluation.stats import (
    bootstrap_ci,
    delong_auc,
    delong_ci,
    delong_compare,
    delong_test,
    group_mean_scores,
    holm,
    seed_summary,
    significant_by_2std,
    wilcoxon_holm,
)
from medmtl.evaluation.thresholds import metrics_at_thresholds, youden_threshold
from medmtl.metrics import METRICS, auc, f1, sensitivity, specificity

HERE = Path(__file__).resolve().parent
TOL = 1e-6


# ----------------------------------------------------------------------------- reference data
def _breast_cancer():
    """Real scores: a logistic regression and one raw feature on scikit-learn's bundled WDBC data."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    y = 1 - data.target  # sklearn codes malignant as 0; make malignant the case
    idx = np.random.default_rng(0).permutation(len(y))
    train, test = idx[:300], idx[300:]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(data.data[train], y[train])
    radius = list(data.feature_names).index("mean radius")
    return y[test], model.predict_proba(data.data[test])[:, 1], data.data[test, radius]


def _datasets() -> dict[str, pd.DataFrame]:
    out = {}

    def add(name, y, a, b):
        out[name] = pd.DataFrame({"y": np.asarray(y, int), "a": np.asarray(a, float), "b": np.asarray(b, float)})

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 10)
    add("n20_balanced", y, y + rng.normal(size=20), 0.5 * y + rng.normal(size=20))
    rng = np.random.default_rng(2)
    y = rng.permutation(np.repeat([0, 1], [28, 22]))
    add("n50_ties", y, np.round(0.3 * y + rng.uniform(size=50), 1), np.round(0.2 * y + rng.uniform(size=50), 1))
    rng = np.random.default_rng(3)
    y = rng.permutation(np.repeat([0, 1], [180, 20]))
    add("n200_unbalanced", y, 1.2 * y + rng.normal(size=200), 0.8 * y + rng.normal(size=200))
    rng = np.random.default_rng(4)
    y = rng.permutation(np.repeat([0, 1], [350, 150]))
    rate = lambda shift: np.clip(np.round(2.5 + shift * y + rng.normal(size=500)), 1, 5)  # noqa: E731  1-5 ratings
    add("n500_ratings", y, rate(1.0), rate(0.6))
    rng = np.random.default_rng(5)
    y = rng.permutation(np.repeat([0, 1], 30))
    add("n60_below_half", y, -0.7 * y + rng.normal(size=60), y + rng.normal(size=60))
    rng = np.random.default_rng(6)
    y = rng.permutation(np.repeat([0, 1], [25, 15]))
    add("n40_near_perfect", y, 3.5 * y + rng.normal(size=40), y + rng.normal(size=40))
    rng = np.random.default_rng(7)
    y = rng.permutation(np.repeat([0, 1], [70, 50]))
    a = y + rng.normal(size=120)
    add("n120_correlated", y, a, a + 0.3 * rng.normal(size=120))
    rng = np.random.default_rng(8)
    y = rng.permutation(np.repeat([0, 1], [291, 9]))
    add("n300_rare", y, 1.5 * y + rng.normal(size=300), y + rng.normal(size=300))
    add("breast_cancer", *_breast_cancer())
    return out


DATASETS = _datasets()


def _proc_or_reason() -> tuple[str | None, str]:
    exe = shutil.which("Rscript")
    if exe is None:
        return None, "Rscript is not on PATH"
    if subprocess.run([exe, "-e", "library(pROC)"], capture_output=True).returncode != 0:
        return None, "the R package pROC is not installed"
    return exe, ""


@pytest.fixture(scope="module")
def proc(tmp_path_factory) -> pd.DataFrame:
    """pROC's numbers for every dataset, from one Rscript run."""
    exe, why = _proc_or_reason()
    if exe is None:
        message = f"{why}; install it with `apt-get install --no-install-recommends r-cran-proc`"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the comparison with pROC must run: {message}")
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("proc")
    for name, frame in DATASETS.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    run = subprocess.run([exe, str(HERE / "proc_reference.R"), str(folder)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return pd.read_csv(io.StringIO(run.stdout), index_col="name")


def test_datasets_cover_the_hard_cases():
    assert len(DATASETS) >= 8
    sizes = [len(f) for f in DATASETS.values()]
    assert min(sizes) == 20 and max(sizes) == 500
    assert any(f["a"].duplicated().any() for f in DATASETS.values())          # ties
    assert min(f["y"].mean() for f in DATASETS.values()) < 0.05               # unbalanced


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_delong_matches_proc(proc, name):
    frame, ref = DATASETS[name], proc.loc[name]
    y, a, b = frame["y"].to_numpy(), frame["a"].to_numpy(), frame["b"].to_numpy()
    auc_a, (lo_a, hi_a) = delong_ci(y, a)
    auc_b, (lo_b, hi_b) = delong_ci(y, b)
    z, p = delong_test(y, a, b)
    ours = np.array([auc_a, lo_a, hi_a, auc_b, lo_b, hi_b, z, p, youden_threshold(y, a)])
    theirs = ref[["auc_a", "lo_a", "hi_a", "auc_b", "lo_b", "hi_b", "z", "p", "youden_a"]].to_numpy(float)
    assert np.abs(ours - theirs).max() < TOL, dict(zip(ref.index, ours - theirs))
    assert p == pytest.approx(ref["p"], rel=TOL)   # tiny p-values too, where 1e-6 absolute says nothing


def test_proc_cases_include_clipping_and_reversed_curves(proc):
    # without these, the [0, 1] clip and the fixed direction would go untested
    assert (proc["hi_a"] == 1.0).any()
    assert (proc["auc_a"] < 0.5).any()


def test_delong_auc_equals_sklearn_on_real_scores():
    from sklearn.metrics import roc_auc_score

    y, model, radius = _breast_cancer()
    for s in (model, radius):
        value, var = delong_auc(y, s)
        assert value == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert 0 < var < 0.01
    assert delong_auc(y, model)[0] == pytest.approx(auc(y, np.stack([1 - model, model], 1)), abs=1e-12)


def test_delong_test_of_identical_scores_is_not_significant():
    y, model, _ = _breast_cancer()
    assert delong_test(y, model, model) == (0.0, 1.0)


def test_delong_rejects_bad_input():
    with pytest.raises(ValueError, match=r"binary labels 0 \(control\) and 1 \(case\)"):
        delong_auc([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="at least 2 cases"):
        delong_ci([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="scores_b contains NaN"):
        delong_test([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.1, np.nan, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], alpha=5)


def test_group_mean_scores_averages_per_group_and_refuses_mixed_labels():
    y, (s,), ids = group_mean_scores([0, 0, 1, 1, 1], ["p2", "p2", "p1", "p1", "p3"], [0.2, 0.4, 0.5, 0.7, 0.9])
    assert ids.tolist() == ["p1", "p2", "p3"] and y.tolist() == [1, 0, 1]
    assert s == pytest.approx([0.6, 0.3, 0.9])
    with pytest.raises(ValueError, match="group 'p1' has rows with different labels"):
        group_mean_scores([0, 1, 1], ["p1", "p1", "p2"], [0.1, 0.2, 0.3])


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_the_estimate_and_is_reproducible():
    y, model, _ = _breast_cancer()
    est, (lo, hi) = bootstrap_ci(auc, y, model, n_boot=300, random_state=0)
    assert est == pytest.approx(delong_auc(y, model)[0])
    assert lo < est < hi <= 1
    assert bootstrap_ci(auc, y, model, n_boot=300, random_state=0) == (est, (lo, hi))
    assert bootstrap_ci(auc, y, model, n_boot=300, random_state=np.random.default_rng(0)) == (est, (lo, hi))
    assert bootstrap_ci(auc, y, model, n_boot=300, random_state=1)[1] != (lo, hi)


def _recorder():
    """A metric that records the row indices it is given (passed in as the scores)."""
    seen: list[np.ndarray] = []

    def metric(y, rows):
        seen.append(rows.astype(int))
        return float(np.mean(y))

    return metric, seen


def test_bootstrap_resamples_whole_groups_within_majority_class():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=30)
    sizes[0] = 5
    groups = np.repeat(np.arange(30), sizes)
    y = np.repeat(np.arange(30) % 3 == 0, sizes).astype(int)   # 10 positive groups, 20 negative
    y[3:5] = 0                                                  # group 0 mixed, still mostly positive
    metric, seen = _recorder()
    bootstrap_ci(metric, y, np.arange(len(y)), groups=groups, n_boot=100, random_state=0)
    assert len(seen) == 101
    for rows in seen[1:]:
        counts = np.bincount(rows, minlength=len(y))
        per_group = [np.unique(counts[groups == g]) for g in range(30)]
        assert all(len(c) == 1 for c in per_group)                 # a group's rows are drawn together
        drawn = np.array([c[0] for c in per_group])
        assert drawn[::3].sum() == 10 and drawn.sum() == 30         # 10 groups of class 1, 20 of class 0


def test_bootstrap_stratification_keeps_the_class_counts():
    y = np.zeros(100, int)
    y[[5, 50, 95]] = 1
    metric, seen = _recorder()
    bootstrap_ci(metric, y, np.arange(100), n_boot=200, random_state=0)
    assert all(y[rows].sum() == 3 and len(rows) == 100 for rows in seen)
    metric, seen = _recorder()
    bootstrap_ci(metric, y, np.arange(100), n_boot=200, stratified=False, random_state=0)
    assert {int(y[rows].sum()) for rows in seen[1:]} != {3}
    assert any(y[rows].sum() == 0 for rows in seen[1:])


def test_bootstrap_counts_undefined_resamples():
    y, model, _ = _breast_cancer()
    calls = []

    def sometimes_undefined(y_, s_):
        calls.append(1)
        return np.nan if len(calls) % 4 == 1 and len(calls) > 1 else float(np.mean(s_))

    with pytest.warns(RuntimeWarning, match="skipped 5 of 20 resamples"):
        bootstrap_ci(sometimes_undefined, y, model, n_boot=20, random_state=0)
    first = []

    def only_on_full_data(y_, s_):
        first.append(1)
        return 0.5 if len(first) == 1 else np.nan

    with pytest.raises(ValueError, match="undefined on 20 of 20 resamples"):
        bootstrap_ci(only_on_full_data, y, model, n_boot=20, random_state=0)
    with pytest.raises(ValueError, match="metric_fn is undefined on the full data"):
        bootstrap_ci(lambda y_, s_: np.nan, y, model, n_boot=5)
    with pytest.raises(ValueError, match="stratified=True needs 1-D class labels"):
        bootstrap_ci(lambda y_, s_: 1.0, np.zeros((4, 2, 2)), np.zeros((4, 2, 2)), n_boot=5)
    with pytest.raises(TypeError, match="random_state must be None, an int"):
        bootstrap_ci(auc, y, model, n_boot=5, random_state="seed")


def test_bootstrap_segmentation_metric_without_stratification():
    rng = np.random.default_rng(0)
    masks = rng.uniform(size=(12, 8, 8)) > 0.5
    probs = np.where(masks, 0.9, 0.1) * (rng.uniform(size=masks.shape) > 0.2)
    est, (lo, hi) = bootstrap_ci(METRICS.get("dice"), masks, probs, n_boot=100, stratified=False, random_state=0)
    assert lo <= est <= hi


# ----------------------------------------------------------------------------- thresholds
def test_sensitivity_specificity_f1_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.6, 0.4, 0.3, 0.55, 0.1, 0.5, 0.7])
    # at 0.5 (a score equal to it is positive): TP 3, FN 1, FP 2, TN 2
    assert sensitivity(y, s) == 0.75 and specificity(y, s) == 0.5 and f1(y, s) == pytest.approx(6 / 9)
    assert sensitivity(y, np.stack([1 - s, s], 1)) == 0.75            # two score columns: the second is positive
    assert specificity(y, s, threshold=0.65) == 1.0 and sensitivity(y, s, threshold=0.65) == 0.5
    assert np.isnan(sensitivity(np.zeros(3, int), [0.1, 0.6, 0.7]))   # no positives: undefined, not 0


def test_multiclass_threshold_metrics_are_macro_one_vs_rest():
    from sklearn.metrics import f1_score, recall_score

    y = np.array([0, 1, 2, 2])
    scores = np.eye(3)[[0, 2, 2, 1]] * 0.8 + 0.1                      # predicts 0, 2, 2, 1
    assert sensitivity(y, scores) == pytest.approx(0.5) == recall_score(y, [0, 2, 2, 1], average="macro")
    assert specificity(y, scores) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert f1(y, scores) == pytest.approx(f1_score(y, [0, 2, 2, 1], average="macro"))


def test_config_metric_names_are_all_registered():
    from medmtl.config.schema import METRICS as CONFIG_METRICS

    assert CONFIG_METRICS and set(CONFIG_METRICS) <= set(METRICS)


def test_youden_threshold_on_validation_applied_to_test():
    y_val = [0, 0, 0, 1, 1, 1]
    s_val = [0.1, 0.2, 0.6, 0.4, 0.7, 0.9]
    # J is 2/3 at both 0.3 and 0.65; the tie goes to the lower threshold (higher sensitivity)
    assert youden_threshold(y_val, s_val) == pytest.approx(0.3)
    out = metrics_at_thresholds(y_val, s_val, [0, 1, 1, 0], [0.35, 0.45, 0.25, 0.1])
    assert out == pytest.approx({"threshold_youden": 0.3,
                                 "sensitivity@0.5": 0.0, "specificity@0.5": 1.0, "f1@0.5": 0.0,
                                 "sensitivity@youden": 0.5, "specificity@youden": 0.5, "f1@youden": 0.5})
    with pytest.raises(ValueError, match="y_val needs both classes"):
        youden_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="scores_val are all equal"):
        youden_threshold([0, 1], [0.2, 0.2])


# ----------------------------------------------------------------------------- repeated seeds
def test_seed_summary_and_two_std_rule():
    summary = seed_summary({"stl": [0.80, 0.82, 0.81], "mtl": [0.70, 0.72, 0.71], "one": [0.5]})
    assert summary["stl"] == pytest.approx({"mean": 0.81, "std": 0.01, "n": 3})
    assert np.isnan(summary["one"]["std"])
    assert significant_by_2std([0.80, 0.82, 0.81], [0.70, 0.72, 0.71])        # 0.10 > 2 x 0.01
    assert not significant_by_2std([0.8, 0.9, 0.7], [0.75, 0.76, 0.74])       # 0.05 < 2 x 0.1
    with pytest.raises(ValueError, match="b must be a 1-D list of at least 2 per-seed values"):
        significant_by_2std([0.8, 0.9], [0.7])


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_wilcoxon_holm_by_hand():
    a = np.array([0.80, 0.81, 0.79, 0.83, 0.84, 0.82])
    result = wilcoxon_holm({
        "busi": [0.02, 0.03, 0.01, 0.04, 0.05],           # all 5 positive: exact p = 2 / 2^5
        "mias": (a, a + np.arange(1, 7) / 100),          # paired values, 6 negative differences: p = 2 / 2^6
        "isic": [1, -2, 3, 4, 5],                        # W- = 2: P(W <= 2) = 3 / 32, p = 6 / 32
        "same": [0.0, 0.0, 0.0],                         # no difference at all
    })
    assert [result[k]["p_value"] for k in ("busi", "mias", "isic", "same")] == pytest.approx(
        [0.0625, 0.03125, 0.1875, 1.0])
    # Holm over four: 0.03125 x 4 = 0.125, 0.0625 x 3 = 0.1875, 0.1875 x 2 = 0.375, 1 x 1 = 1
    assert [result[k]["p_holm"] for k in ("busi", "mias", "isic", "same")] == pytest.approx(
        [0.1875, 0.125, 0.375, 1.0])
    assert result["mias"]["n"] == 6 and result["mias"]["median_diff"] == pytest.approx(-0.035)
    assert not any(r["significant"] for r in result.values())


# ----------------------------------------------------------------------------- CLI
def _csv(tmp_path, frame: pd.DataFrame) -> str:
    path = tmp_path / "predictions.csv"
    frame.to_csv(path, index=False)
    return str(path)


def test_cli_delong_two_columns_equals_the_api(tmp_path):
    frame = DATASETS["n200_unbalanced"]
    result = CliRunner().invoke(app, ["stats", "delong", _csv(tmp_path, frame), "--truth", "y", "--scores", "a", "b"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    y, a, b = frame["y"].to_numpy(), frame["a"].to_numpy(), frame["b"].to_numpy()
    auc_a, ci_a = delong_ci(y, a)
    auc_b, ci_b = delong_ci(y, b)
    assert doc == {"auc_a": auc_a, "ci_a": list(ci_a), "auc_b": auc_b, "ci_b": list(ci_b),
                   "p_value": delong_test(y, a, b)[1]}


def test_cli_delong_one_column(tmp_path):
    frame = DATASETS["n50_ties"]
    result = CliRunner().invoke(app, ["stats", "delong", _csv(tmp_path, frame), "--truth", "y", "--scores", "a"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    auc_a, ci_a = delong_ci(frame["y"], frame["a"])
    assert doc == {"auc_a": auc_a, "ci_a": list(ci_a)}


def test_cli_delong_group_averages_scores_per_patient(tmp_path):
    rng = np.random.default_rng(0)
    patient_y = rng.permutation(np.repeat([0, 1], 20))
    groups = np.repeat(np.arange(40), 3)
    y = patient_y[groups]
    frame = pd.DataFrame({"y": y, "patient": groups, "a": y + rng.normal(size=120), "b": rng.normal(size=120)})
    result = CliRunner().invoke(app, ["stats", "delong", _csv(tmp_path, frame), "--truth", "y",
                                      "--scores", "a", "b", "--group", "patient"])
    assert result.exit_code == 0, result.output
    y_g, (a_g, b_g), _ = group_mean_scores(y, groups, frame["a"], frame["b"])
    assert len(y_g) == 40
    assert json.loads(result.stdout) == delong_compare(y_g, a_g, b_g)
    assert json.loads(result.stdout) != delong_compare(y, frame["a"], frame["b"])


@pytest.mark.parametrize("args, frame, message", [
    (["--truth", "y", "--scores", "a", "nope"], {"y": [0, 1, 0, 1], "a": [0.1, 0.2, 0.3, 0.4]},
     "--scores column 'nope' is not in"),
    (["--truth", "label", "--scores", "a"], {"y": [0, 1, 0, 1], "a": [0.1, 0.2, 0.3, 0.4]},
     "--truth column 'label' is not in"),
    (["--truth", "y", "--scores", "a"], {"y": [0, 1, 2, 1], "a": [0.1, 0.2, 0.3, 0.4]},
     r"--truth column 'y' must hold binary labels 0 \(control\) and 1 \(case\)"),
    (["--truth", "y", "--scores", "a", "b", "c"], {"y": [0, 1], "a": [0.1, 0.2], "b": [0.1, 0.2], "c": [0, 1]},
     "--scores takes one or two columns"),
])
def test_cli_delong_errors_exit_2_naming_the_column(tmp_path, args, frame, message):
    import re

    result = CliRunner().invoke(app, ["stats", "delong", _csv(tmp_path, pd.DataFrame(frame)), *args])
    assert result.exit_code == 2
    assert re.search(message, result.output), result.output


# -- case-aware choices, power, degenerate models -------------------------------------------------
def test_images_of_one_patient_are_resampled_together():
    """Each patient's image filed four times: DeLong on the images is twice too sure; the grouped
    bootstrap gives the width the patients themselves give."""
    from medmtl.evaluation.stats import auc_interval, repeated_groups

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    s = np.stack([1 - (p := 1 / (1 + np.exp(-(y * 1.2 + rng.normal(0, 1, 120))))), p], axis=1)
    patients = np.arange(120).astype(str)
    est1, lo1, hi1, how1 = auc_interval(y, s, patients)
    assert how1 == "DeLong" and not repeated_groups(patients)
    y4, s4, g4 = np.repeat(y, 4), np.repeat(s, 4, axis=0), np.repeat(patients, 4)
    _, lo_d, hi_d, _ = auc_interval(y4, s4, None)                    # images taken as independent
    est4, lo4, hi4, how4 = auc_interval(y4, s4, g4, n_boot=1000)
    assert how4.startswith("grouped bootstrap (1000, 120 groups") and est4 == pytest.approx(est1)
    assert (hi_d - lo_d) < 0.6 * (hi1 - lo1)                         # the too-narrow interval
    assert (hi4 - lo4) == pytest.approx(hi1 - lo1, rel=0.25)          # the patients' width


def test_paired_test_over_groups_and_the_detectable_difference():
    from medmtl.evaluation.stats import auc_difference_test, detectable_difference

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 200)
    a = y * 1.0 + rng.normal(0, 1, 200)
    b = y * 1.0 + rng.normal(0, 1, 200)
    two = lambda v: np.stack([1 - 1 / (1 + np.exp(-v)), 1 / (1 + np.exp(-v))], axis=1)  # noqa: E731
    p, sd, how = auc_difference_test(y, two(a), two(b))
    assert how == "DeLong paired" and 0 < sd < 0.1 and p > 0.01
    mdd = detectable_difference(sd)
    assert mdd == pytest.approx((1.959964 + 0.841621) * sd, rel=1e-4)
    # the seeds' spread adds to it: three seeds disagreeing by a few hundredths
    assert detectable_difference(sd, [0.05, -0.03, 0.01]) > mdd
    groups = np.repeat(np.arange(50), 4).astype(str)
    p_g, sd_g, how_g = auc_difference_test(y, two(a), two(b), groups, n_boot=300)
    assert how_g == "paired bootstrap (300, over 50 groups)" and sd_g > 0 and 0 < p_g <= 1


def test_degenerate_scores_are_named():
    from medmtl.evaluation.stats import degenerate

    y = np.array([0, 1, 0, 1])
    assert degenerate(y, np.full((4, 2), 0.5)).startswith("the scores are constant")
    assert degenerate(np.zeros(4, int), np.random.default_rng(0).random((4, 2))) == "the cases hold one class only"
    assert degenerate(y, np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])) is None
