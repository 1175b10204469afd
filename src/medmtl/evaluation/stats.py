"""Statistics for comparing models: DeLong AUC tests, bootstrap CIs, and repeated-seed rules.

Conventions shared by the DeLong functions: ``y`` is 0 (control) or 1 (case) and a higher score
means "more likely a case". That is pROC's ``roc(y, s, levels=c(0, 1), direction="<")``; pROC's
default ``direction="auto"`` would instead flip a curve whose AUC is below 0.5, so pROC must be
called with both arguments for the numbers to agree (they do to 1e-6; tests/test_stats.py checks).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import norm, rankdata, wilcoxon

__all__ = [
    "delong_auc", "delong_ci", "delong_test", "delong_compare", "group_mean_scores",
    "bootstrap_ci", "seed_summary", "significant_by_2std", "wilcoxon_holm", "holm",
]


# ----------------------------------------------------------------------------- input checks
def check_binary_labels(y, name: str = "y", min_per_class: int = 1) -> np.ndarray:
    """``y`` as an int array of 0/1 with at least ``min_per_class`` of each class."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(int)
    if not (np.issubdtype(y.dtype, np.number) and np.isin(y, (0, 1)).all()):
        found = np.unique(y.astype(str))[:10].tolist()
        raise ValueError(f"{name} must hold binary labels 0 (control) and 1 (case); got values {found}")
    y = y.astype(int)
    n_cases, n_controls = int(y.sum()), int(len(y) - y.sum())
    if min(n_cases, n_controls) < min_per_class:
        raise ValueError(f"{name} needs at least {min_per_class} cases (1) and {min_per_class} controls (0); "
                         f"got {n_cases} cases and {n_controls} controls")
    return y


def check_scores(scores, n: int, name: str = "scores") -> np.ndarray:
    """``scores`` as a finite float array with ``n`` rows."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 0 or len(scores) != n:
        raise ValueError(f"{name} must have one row per label ({n}); got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop or impute those rows first")
    return scores


def check_random_state(random_state) -> np.random.Generator:
    """None, an int seed or a ``numpy.random.Generator`` (returned as is) -> a Generator."""
    if random_state is None or isinstance(random_state, (int, np.integer, np.random.Generator)):
        return np.random.default_rng(random_state)
    raise TypeError(f"random_state must be None, an int or a numpy.random.Generator; got {random_state!r}")


def _check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1) (0.05 gives a 95% interval); got {alpha!r}")
    return float(alpha)


# ----------------------------------------------------------------------------- DeLong
def _placements(y: np.ndarray, scores: np.ndarray):
    """AUCs and DeLong placement values of k score rows, by midranks (Sun & Xu 2014, Alg. 2).

    ``scores`` is (k, N). Returns ``theta`` (k,), ``v10`` (k, m) over the cases and ``v01`` (k, n)
    over the controls. Midranks count a tie as half, the Mann-Whitney kernel DeLong uses, in
    O(N log N) instead of the O(m n) pairwise comparison.
    """
    cases, controls = scores[:, y == 1], scores[:, y == 0]
    m, n = cases.shape[1], controls.shape[1]
    tz = rankdata(np.concatenate([cases, controls], axis=1), axis=1)
    tx = rankdata(cases, axis=1)
    ty = rankdata(controls, axis=1)
    theta = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n          # share of controls below each case
    v01 = 1.0 - (tz[:, m:] - ty) / m    # share of cases above each control
    return theta, v10, v01


def _delong_cov(y: np.ndarray, scores: np.ndarray):
    """AUCs (k,) and their DeLong covariance matrix (k, k) (DeLong et al. 1988, eq. 4-5)."""
    theta, v10, v01 = _placements(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10, ddof=1)) / m + np.atleast_2d(np.cov(v01, ddof=1)) / n
    return theta, cov


def delong_auc(y, scores) -> tuple[float, float]:
    """The AUC and its DeLong variance.

    DeLong, DeLong & Clarke-Pearson, "Comparing the areas under two or more correlated receiver
    operating characteristic curves: a nonparametric approach", Biometrics 44(3):837-845, 1988;
    computed with the midrank algorithm of Sun & Xu, "Fast implementation of DeLong's algorithm
    for comparing the areas under correlated receiver operating characteristic curves", IEEE
    Signal Processing Letters 21(11):1389-1393, 2014.

    Args:
        y: Labels, 0 (control) or 1 (case), shape (N,), with at least 2 of each.
        scores: Scores, higher meaning "case", shape (N,).

    Returns:
        ``(auc, variance)``; the AUC counts tied case/control pairs as one half.

    Raises:
        ValueError: if ``y`` is not binary, has fewer than 2 cases or controls (the variance
            divides by m - 1 and n - 1), or ``scores`` is not finite.
    """
    y = check_binary_labels(y, "y", min_per_class=2)
    s = check_scores(scores, len(y), "scores")
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (one score per case); got shape {s.shape}")
    theta, cov = _delong_cov(y, s[None, :])
    return float(theta[0]), float(cov[0, 0])


def delong_ci(y, scores, alpha: float = 0.05) -> tuple[float, tuple[float, float]]:
    """The AUC with its DeLong confidence interval, as pROC's ``ci.auc(method="delong")``.

    The interval is the normal quantile ``auc + z * sqrt(var)`` at ``alpha/2`` and ``1 - alpha/2``,
    clipped to [0, 1] (pROC 1.18 ``ci.auc.delong``). DeLong et al. 1988 (see :func:`delong_auc`).

    Args:
        y: Labels, 0 (control) or 1 (case), shape (N,).
        scores: Scores, higher meaning "case", shape (N,).
        alpha: One minus the confidence level.

    Returns:
        ``(auc, (lo, hi))``.
    """
    alpha = _check_alpha(alpha)
    auc, var = delong_auc(y, scores)
    half = norm.ppf(1 - alpha / 2) * math.sqrt(var)
    return auc, (min(max(auc - half, 0.0), 1.0), min(max(auc + half, 0.0), 1.0))


def delong_test(y, scores_a, scores_b) -> tuple[float, float]:
    """DeLong's paired test of two AUCs on the same cases: ``roc.test(method="delong", paired=TRUE)``.

    ``z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov_ab)``, two-sided ``p = 2 Phi(-|z|)``
    (DeLong et al. 1988, see :func:`delong_auc`). As in pROC, two identical curves (zero difference,
    zero variance) give z = 0 and p = 1.

    Args:
        y: Labels, 0 (control) or 1 (case), shape (N,).
        scores_a: Scores of model A, shape (N,).
        scores_b: Scores of model B on the same cases, shape (N,).

    Returns:
        ``(z, p_value)``; z > 0 when A has the higher AUC.
    """
    y = check_binary_labels(y, "y", min_per_class=2)
    a = check_scores(scores_a, len(y), "scores_a")
    b = check_scores(scores_b, len(y), "scores_b")
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"scores_a and scores_b must be 1-D; got shapes {a.shape} and {b.shape}")
    theta, cov = _delong_cov(y, np.stack([a, b]))
    d = theta[0] - theta[1]
    sig = math.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0))
    if sig == 0.0:
        z = 0.0 if d == 0 else math.copysign(math.inf, d)
    else:
        z = d / sig
    return float(z), float(2 * norm.cdf(-abs(z)))


def group_mean_scores(y, groups, *scores) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Aggregates image-level rows to one row per group (lesion or patient): the mean score.

    Images of one patient are correlated, so DeLong's variance, which assumes independent cases,
    is too small on image rows. The mean of a group's scores is the aggregation the study protocol
    uses before patient-level metrics; the group's label must be the same on all its rows.

    Args:
        y: Numeric labels, shape (N,).
        groups: Group id of each row, shape (N,).
        *scores: One or more finite score arrays, shape (N,) each.

    Returns:
        ``(y_group, [scores_group, ...], group_ids)`` in sorted group order.

    Raises:
        ValueError: if a group holds more than one label.
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    if groups.shape != y.shape:
        raise ValueError(f"groups must have one id per label; got shape {groups.shape} for y {y.shape}")
    ids, inv = np.unique(groups, return_inverse=True)
    counts = np.bincount(inv)
    y_min = np.full(len(ids), np.inf)
    y_max = np.full(len(ids), -np.inf)
    np.minimum.at(y_min, inv, y.astype(float))
    np.maximum.at(y_max, inv, y.astype(float))
    mixed = np.flatnonzero(y_min != y_max)
    if len(mixed):
        g = ids[mixed[0]]
        g = g.item() if isinstance(g, np.generic) else g
        raise ValueError(f"groups: group {g!r} has rows with different labels {np.unique(y[groups == g]).tolist()} "
                         f"({len(mixed)} such groups); a group-level test needs one label per group")
    scores = [check_scores(s, len(y), f"scores[{k}]") for k, s in enumerate(scores)]
    out = [np.bincount(inv, weights=s) / counts for s in scores]
    return y_min.astype(y.dtype), out, ids


def delong_compare(y, scores_a, scores_b=None, groups=None, alpha: float = 0.05) -> dict:
    """The ``medmtl stats delong`` document: AUC and CI of one model, or of two plus the paired test.

    Args:
        y: Labels, 0 (control) or 1 (case), shape (N,).
        scores_a: Scores of model A, shape (N,).
        scores_b: Optional scores of model B on the same cases.
        groups: Optional group ids; rows are first averaged per group (:func:`group_mean_scores`).
        alpha: One minus the confidence level of the CIs.

    Returns:
        ``{"auc_a", "ci_a": [lo, hi]}`` plus ``{"auc_b", "ci_b", "p_value"}`` when ``scores_b`` is given.
    """
    y = check_binary_labels(y, "y")
    columns = [check_scores(scores_a, len(y), "scores_a")]
    if scores_b is not None:
        columns.append(check_scores(scores_b, len(y), "scores_b"))
    if groups is not None:
        y, columns, _ = group_mean_scores(y, groups, *columns)
    auc_a, ci_a = delong_ci(y, columns[0], alpha)
    doc = {"auc_a": auc_a, "ci_a": list(ci_a)}
    if scores_b is not None:
        auc_b, ci_b = delong_ci(y, columns[1], alpha)
        doc.update(auc_b=auc_b, ci_b=list(ci_b), p_value=delong_test(y, columns[0], columns[1])[1])
    return doc


# ----------------------------------------------------------------------------- bootstrap
def _resampler(y: np.ndarray, groups, stratified: bool) -> Callable[[np.random.Generator], np.ndarray]:
    """A function drawing one bootstrap sample of row indices.

    Without groups each row is a unit; with groups a unit is all rows of one group, so a patient's
    images enter a resample together (Field & Welsh, "Bootstrapping clustered data", JRSS-B
    69(3):369-390, 2007). Stratified: units are drawn with replacement within each class (a group's
    class is its majority label, ties to the smaller label), keeping the class mix of the data.
    """
    n = len(y)
    if groups is None:
        unit_of_row = np.arange(n)
    else:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups must have one id per row ({n}); got shape {groups.shape}")
        _, unit_of_row = np.unique(groups, return_inverse=True)
    n_units = int(unit_of_row.max()) + 1 if n else 0
    if stratified:
        if y.ndim != 1:
            raise ValueError(f"stratified=True needs 1-D class labels y; got shape {y.shape}; "
                             "pass stratified=False for segmentation, detection or multi-label targets")
        classes, label = np.unique(y, return_inverse=True)
        votes = np.zeros((n_units, len(classes)), int)
        np.add.at(votes, (unit_of_row, label), 1)
        strata = [np.flatnonzero(votes.argmax(axis=1) == c) for c in range(len(classes))]
    else:
        strata = [np.arange(n_units)]
    strata = [s for s in strata if len(s)]
    if groups is None:
        return lambda rng: np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])
    # rows of each unit, in row order: a stable sort keeps the draws reproducible across numpy builds
    order = np.argsort(unit_of_row, kind="stable")
    rows = np.split(order, np.cumsum(np.bincount(unit_of_row, minlength=n_units))[:-1])

    def draw(rng: np.random.Generator) -> np.ndarray:
        units = np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])
        return np.concatenate([rows[u] for u in units])

    return draw


def bootstrap_ci(metric_fn: Callable, y, scores, groups=None, n_boot: int = 2000, alpha: float = 0.05,
                 stratified: bool = True, random_state=None) -> tuple[float, tuple[float, float]]:
    """Percentile bootstrap confidence interval of any metric ``metric_fn(y, scores) -> float``.

    Efron & Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall, 1993, ch. 13. With
    ``groups`` whole groups are resampled (see :func:`_resampler`), because images of one patient are
    not independent and row resampling would give too narrow an interval.

    A resample on which the metric is undefined (NaN, or a ``ValueError`` such as scikit-learn's
    "only one class present") is skipped and counted; a ``RuntimeWarning`` reports the count, and
    more than half undefined is an error, since the interval would then describe a biased subset.

    Args:
        metric_fn: Metric on numpy arrays, e.g. an entry of ``medmtl.metrics.METRICS``.
        y: Targets, first axis = rows (class labels (N,), or masks/boxes when not stratified).
        scores: Predictions, first axis = rows.
        groups: Optional group (patient) id per row, shape (N,).
        n_boot: Number of resamples.
        alpha: One minus the confidence level.
        stratified: Resample within each class of ``y`` (needs 1-D ``y``).
        random_state: None, an int seed or a ``numpy.random.Generator``.

    Returns:
        ``(estimate, (lo, hi))``; the estimate is the metric on the full data.

    Raises:
        ValueError: if the metric is undefined on the full data or on more than half the resamples.
    """
    y = np.asarray(y)
    scores = np.asarray(scores)
    if len(scores) != len(y):
        raise ValueError(f"scores must have one row per row of y ({len(y)}); got {len(scores)}")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise ValueError(f"n_boot must be a positive int; got {n_boot!r}")
    alpha = _check_alpha(alpha)
    rng = check_random_state(random_state)
    estimate = float(metric_fn(y, scores))
    if not math.isfinite(estimate):
        raise ValueError(f"metric_fn is undefined on the full data (got {estimate}); check y has every class it needs")
    draw = _resampler(y, groups, stratified)
    values = []
    for _ in range(n_boot):
        idx = draw(rng)
        try:
            value = float(metric_fn(y[idx], scores[idx]))
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            values.append(value)
    undefined = n_boot - len(values)
    if undefined > n_boot / 2:
        raise ValueError(f"the metric was undefined on {undefined} of {n_boot} resamples; the data are too small "
                         "or too unbalanced for a bootstrap CI (try stratified=True)")
    if undefined:
        warnings.warn(f"bootstrap_ci skipped {undefined} of {n_boot} resamples where the metric was undefined",
                      RuntimeWarning, stacklevel=2)
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return estimate, (float(lo), float(hi))


def interval(metric_fn: Callable, y, scores, groups=None, n_boot: int = 1000, alpha: float = 0.05,
             stratified: bool = True, random_state=0) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of :func:`bootstrap_ci`, all NaN where the metric is undefined (one
    class present, too few cases): the report's form, where a missing interval is shown, not raised."""
    y = np.asarray(y)
    if len(y) == 0:
        return math.nan, math.nan, math.nan
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # skipped resamples: the interval still stands
            est, (lo, hi) = bootstrap_ci(metric_fn, y, scores, groups=groups, n_boot=n_boot, alpha=alpha,
                                         stratified=stratified, random_state=random_state)
    except ValueError:
        try:
            est = float(metric_fn(y, np.asarray(scores)))
        except ValueError:
            est = math.nan
        return est, math.nan, math.nan
    return est, lo, hi


def bootstrap_auc_ci(y, scores, groups=None, n_boot: int = 1000, alpha: float = 0.05,
                     random_state=0) -> tuple[float, float, float]:
    """AUC and its (1 - alpha) percentile CI from a class-stratified bootstrap (of groups when given).

    Args:
        y: class index per image (``y_true`` of ``predictions.csv``).
        scores: positive-class scores (n,), or probabilities (n, C): binary uses column 1, more
            classes give the macro one-vs-rest AUC over the classes present.
        groups: optional patient/lesion id per image; whole groups are resampled.

    Returns:
        ``(auc, low, high)``; all NaN when ``y`` holds fewer than two classes.

    Example:
        >>> auc, lo, hi = bootstrap_auc_ci(np.array([0, 0, 1, 1]), np.array([.1, .4, .35, .8]))
        >>> round(auc, 2)
        0.75
    """
    if len(np.unique(np.asarray(y))) < 2:
        return math.nan, math.nan, math.nan
    return interval(auc_fast, y, scores, groups=groups, n_boot=n_boot, alpha=alpha, random_state=random_state)


def paired_bootstrap_test(y, scores_a, scores_b, metric_fn: Callable | None = None, groups=None,
                          n_boot: int = 1000, random_state=0) -> float:
    """Two-sided p-value of metric(a) = metric(b) on the same cases (default metric: AUC).

    Each replicate resamples the cases (whole groups when given, within each class) once for both
    models; the p-value is the share of replicate differences, re-centred on zero, at least as
    extreme as the observed one (with the +1 correction, so it is never 0).
    """
    return _paired_bootstrap(y, scores_a, scores_b, metric_fn, groups, n_boot, random_state)[0]


def _paired_bootstrap(y, scores_a, scores_b, metric_fn, groups, n_boot: int, random_state) -> tuple[float, np.ndarray]:
    """(p-value, finite replicate differences) of :func:`paired_bootstrap_test`."""
    metric_fn = metric_fn or auc_fast
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return math.nan, np.zeros(0)
    a, b = np.asarray(scores_a), np.asarray(scores_b)
    d_obs = metric_fn(y, a) - metric_fn(y, b)
    rng = check_random_state(random_state)
    draw = _resampler(y, groups, stratified=y.ndim == 1)
    diffs = []
    for _ in range(n_boot):
        i = draw(rng)
        diffs.append(metric_fn(y[i], a[i]) - metric_fn(y[i], b[i]))
    diffs = np.asarray(diffs, float)
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs):
        return math.nan, diffs
    extreme = np.sum(np.abs(diffs - d_obs) >= abs(d_obs) - 1e-12)
    return float((1 + extreme) / (1 + len(diffs))), diffs


def auc_fast(y, scores) -> float:
    """ROC AUC as the Mann-Whitney statistic with average ranks for ties, equal to
    :func:`medmtl.metrics.auc` (binary on the positive class, multiclass as macro one-vs-rest over
    the classes present). A rank sum instead of scikit-learn's curve integral is ~20x faster, which
    is what makes a 1000-replicate bootstrap cheap; a test holds the two equal."""
    y = np.asarray(y)
    s = np.asarray(scores, dtype=np.float64)
    present = np.unique(y)
    if len(present) < 2:
        return math.nan
    if s.ndim == 1 or s.shape[1] == 2:
        return _binary_auc(y == (1 if s.ndim == 2 else present[-1]), s[:, 1] if s.ndim == 2 else s)
    return float(np.mean([_binary_auc(y == c, s[:, c]) for c in present]))


def _binary_auc(pos: np.ndarray, s: np.ndarray) -> float:
    n1 = int(pos.sum())
    n0 = len(pos) - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ----------------------------------------------------------------------------- case-aware choices
def repeated_groups(groups) -> bool:
    """Whether some group (patient, lesion) holds several rows: then rows are not independent cases."""
    if groups is None:
        return False
    g = np.asarray(groups)
    return len(np.unique(g)) < len(g)


def _delong_applies(y: np.ndarray, s: np.ndarray) -> bool:
    return s.ndim == 2 and s.shape[1] == 2 and np.bincount(y, minlength=2).min() >= 2 if len(y) else False


def auc_interval(y, scores, groups=None, n_boot: int = 1000, alpha: float = 0.05,
                 random_state=0) -> tuple[float, float, float, str]:
    """``(auc, low, high, method)``: DeLong's CI for a binary task whose rows are independent cases;
    where rows share a group (several images of one patient) DeLong's variance is too small, so a
    class-stratified bootstrap that resamples whole groups is used instead, and ``method`` says which."""
    y, s = np.asarray(y), np.asarray(scores)
    if repeated_groups(groups):
        est, lo, hi = bootstrap_auc_ci(y, s, groups=groups, n_boot=n_boot, alpha=alpha, random_state=random_state)
        return est, lo, hi, f"grouped bootstrap ({n_boot}, {len(np.unique(groups))} groups: rows share groups)"
    if _delong_applies(y, s):
        est, (lo, hi) = delong_ci(y, s[:, 1].astype(float), alpha=alpha)
        return est, lo, hi, "DeLong"
    est, lo, hi = bootstrap_auc_ci(y, s, n_boot=n_boot, alpha=alpha, random_state=random_state)
    return est, lo, hi, f"stratified bootstrap ({n_boot})" + ("" if s.ndim == 2 and s.shape[1] == 2 else
                                                              ", macro one-vs-rest")


def auc_difference_test(y, scores_a, scores_b, groups=None, n_boot: int = 1000,
                        random_state=0) -> tuple[float, float, str]:
    """``(p, sd, method)`` of AUC(a) = AUC(b) on the same cases: DeLong's paired test where rows are
    independent binary cases, else a paired bootstrap resampling whole groups (Obuchowski's point:
    images of one patient are one cluster). ``sd`` is the standard error of the AUC difference, what
    :func:`detectable_difference` needs."""
    y, a, b = np.asarray(y), np.asarray(scores_a), np.asarray(scores_b)
    if not repeated_groups(groups) and _delong_applies(y, a):
        theta, cov = _delong_cov(y, np.stack([a[:, 1].astype(float), b[:, 1].astype(float)]))
        sd = math.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0))
        return float(delong_test(y, a[:, 1].astype(float), b[:, 1].astype(float))[1]), sd, "DeLong paired"
    p, diffs = _paired_bootstrap(y, a, b, auc_fast, groups if repeated_groups(groups) else None, n_boot,
                                 random_state)
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan
    unit = f"{len(np.unique(groups))} groups" if repeated_groups(groups) else "cases"
    return p, sd, f"paired bootstrap ({n_boot}, over {unit})"


def detectable_difference(sd_cases: float, seed_diffs=None, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true AUC difference a two-sided test at ``alpha`` finds with probability ``power``.

    ``(z_{1-alpha/2} + z_power) * sd`` where ``sd`` combines the test-set sampling error of the
    difference (``sd_cases``, one trained pair) and, with two or more seeds, the spread of the
    per-seed differences over their mean (``std / sqrt(n)``); the seeds share one test set, so its
    sampling error is not divided by n. A comparison of methods, not of two trained models, is only
    as sure as the seeds' spread allows.
    """
    var = sd_cases ** 2 if sd_cases is not None and math.isfinite(sd_cases) else math.nan
    d = np.asarray(seed_diffs if seed_diffs is not None else [], float)
    d = d[np.isfinite(d)]
    if len(d) >= 2:
        # every seed is tested on the same cases: their sampling error is shared, not averaged away
        var = (0.0 if math.isnan(var) else var) + float(np.var(d, ddof=1)) / len(d)
    if math.isnan(var):
        return math.nan
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * math.sqrt(var))


def degenerate(y, scores, tol: float = 1e-6) -> str | None:
    """Why an AUC of these scores means nothing (one class present, or (near) constant scores), or None."""
    y, s = np.asarray(y), np.asarray(scores, float)
    if len(np.unique(y)) < 2:
        return "the cases hold one class only"
    if s.ndim == 2:
        s = s[:, 1] if s.shape[1] == 2 else s
    if float(np.max(np.ptp(s, axis=0))) < tol:
        return f"the scores are constant (spread < {tol:g}): the model did not learn"
    return None


# ----------------------------------------------------------------------------- repeated seeds
def _values(values, name: str, min_len: int = 1) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < min_len:
        raise ValueError(f"{name} must be a 1-D list of at least {min_len} per-seed values; got {values!r}")
    return v


def seed_summary(values_by_arm: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1) of each arm's per-seed metric values.

    Args:
        values_by_arm: ``{arm: [value of seed 0, value of seed 1, ...]}``.

    Returns:
        ``{arm: {"mean": m, "std": s, "n": k}}``; ``std`` is NaN for a single seed.
    """
    out = {}
    for arm, values in values_by_arm.items():
        v = _values(values, f"values_by_arm[{arm!r}]")
        out[arm] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": len(v)}
    return out


def significant_by_2std(a: Sequence[float], b: Sequence[float]) -> bool:
    """The repeated-seed rule: significant when ``|mean_a - mean_b| > 2 * max(std_a, std_b)``.

    A deliberately conservative screen for seed-to-seed noise (std with ddof=1 over seeds), used
    where a handful of seeds is too few for a rank test to ever reach significance.

    Args:
        a: Per-seed values of arm A (at least 2).
        b: Per-seed values of arm B (at least 2).
    """
    va, vb = _values(a, "a", 2), _values(b, "b", 2)
    return bool(abs(va.mean() - vb.mean()) > 2 * max(va.std(ddof=1), vb.std(ddof=1)))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm, "A simple sequentially rejective multiple test
    procedure", Scand. J. Statist. 6(2):65-70, 1979), in the input order.

    The i-th smallest p is multiplied by (m - i + 1), made non-decreasing and capped at 1, as R's
    ``p.adjust(method="holm")``. Written out here because statsmodels, which has it, is not a
    dependency and five lines do not justify one.
    """
    p = _values(p_values, "p_values", 0)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def wilcoxon_holm(diffs_by_dataset: Mapping[str, object], alpha: float = 0.05) -> dict[str, dict[str, float]]:
    """Wilcoxon signed-rank test per dataset, Holm-corrected across the datasets.

    Wilcoxon, "Individual comparisons by ranking methods", Biometrics Bulletin 1(6):80-83, 1945
    (``scipy.stats.wilcoxon``, two-sided); Holm 1979 (see :func:`holm`) controls the family-wise
    error over the datasets compared.

    Args:
        diffs_by_dataset: ``{dataset: diffs}`` with the per-seed differences A - B (1-D), or
            ``{dataset: (a, b)}`` with the paired per-seed values (an array of shape (2, k)).
        alpha: Family-wise error rate for the ``significant`` flag.

    Returns:
        ``{dataset: {"n", "median_diff", "statistic", "p_value", "p_holm", "significant"}}``.
    """
    alpha = _check_alpha(alpha)
    rows = {}
    for name, value in diffs_by_dataset.items():
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 2 and arr.shape[0] == 2:
            arr = arr[0] - arr[1]
        d = _values(arr, f"diffs_by_dataset[{name!r}]")
        if not d.any():
            # scipy divides 0 by 0 here (with a warning); no difference at all is p = 1 by definition
            stat, p = 0.0, 1.0
        else:
            res = wilcoxon(d)
            stat, p = float(res.statistic), float(res.pvalue)
        rows[name] = {"n": len(d), "median_diff": float(np.median(d)), "statistic": stat, "p_value": p}
    for row, p_adj in zip(rows.values(), holm([r["p_value"] for r in rows.values()])):
        row["p_holm"] = float(p_adj)
        row["significant"] = bool(p_adj < alpha)
    return rows
