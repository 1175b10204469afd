"""Confidence intervals and paired tests the report computes from per-image predictions.

The stratified bootstrap here is the fallback. When ``medmtl.evaluation.stats`` is importable,
binary AUCs get DeLong's CI and DeLong's paired test instead (see :func:`delong_available`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

log = logging.getLogger("medmtl.reports")

ALPHA = 0.05


def auc_fast(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with average ranks for ties, so the value equals
    ``medmtl.metrics.auc`` (binary on the positive class, multiclass as macro one-vs-rest over
    the classes present). It is a rank sum, not sklearn's curve integral: ~20x faster, which is
    what makes a 1000-replicate bootstrap cheap."""
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


def _strata_draw(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One stratified resample: each class keeps its count, so every replicate has both classes."""
    return np.concatenate([rng.choice(idx, size=len(idx), replace=True)
                           for idx in (np.flatnonzero(y == c) for c in np.unique(y))])


def bootstrap_ci(metric_fn: Callable[[np.ndarray, np.ndarray], float], y: np.ndarray, scores: np.ndarray, *,
                 n_boot: int = 1000, alpha: float = ALPHA, seed: int = 0,
                 stratified: bool = True) -> tuple[float, float, float]:
    """(estimate, low, high): percentile CI of ``metric_fn`` over a bootstrap of rows.

    ``stratified`` keeps each class's count in every replicate: right for AUC, which is defined
    given the classes; wrong for accuracy, whose variance comes partly from the class mix (a model
    predicting one class would get a zero-width interval).
    """
    y = np.asarray(y)
    scores = np.asarray(scores)
    if len(y) == 0:
        return math.nan, math.nan, math.nan
    est = float(metric_fn(y, scores))
    rng = np.random.default_rng(seed)
    draw = (lambda: _strata_draw(y, rng)) if stratified else (lambda: rng.integers(0, len(y), len(y)))
    reps = np.array([metric_fn(y[i], scores[i]) for i in (draw() for _ in range(n_boot))], float)
    reps = reps[np.isfinite(reps)]
    if not reps.size:
        return est, math.nan, math.nan
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return est, float(lo), float(hi)


def bootstrap_auc_ci(y: np.ndarray, s: np.ndarray, n_boot: int = 1000, seed: int = 0,
                     alpha: float = ALPHA) -> tuple[float, float, float]:
    """AUC and its (1 - alpha) percentile CI from a class-stratified bootstrap over images.

    Args:
        y: class index per image (``y_true`` of ``predictions.csv``).
        s: positive-class scores (n,), or probabilities (n, C): binary uses column 1, more
            classes give the macro one-vs-rest AUC over the classes present.
        n_boot: bootstrap replicates.
        seed: seed of the resampling.
        alpha: 0.05 gives a 95% CI.

    Returns:
        ``(auc, low, high)``; all NaN when ``y`` holds fewer than two classes.

    Example:
        >>> auc, lo, hi = bootstrap_auc_ci(np.array([0, 0, 1, 1]), np.array([.1, .4, .35, .8]))
        >>> round(auc, 2)
        0.75
    """
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return math.nan, math.nan, math.nan
    return bootstrap_ci(auc_fast, y, s, n_boot=n_boot, alpha=alpha, seed=seed)


def paired_bootstrap_auc_test(y: np.ndarray, s1: np.ndarray, s2: np.ndarray, *, n_boot: int = 1000,
                              seed: int = 0) -> float:
    """Two-sided p-value of AUC(s1) = AUC(s2) on the same images, from the bootstrap distribution of
    the difference re-centred on zero (each replicate resamples the images once for both models)."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return math.nan
    d_obs = auc_fast(y, s1) - auc_fast(y, s2)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        i = _strata_draw(y, rng)
        diffs.append(auc_fast(y[i], s1[i]) - auc_fast(y[i], s2[i]))
    diffs = np.asarray(diffs)
    extreme = np.sum(np.abs(diffs - d_obs) >= abs(d_obs) - 1e-12)
    return float((1 + extreme) / (1 + n_boot))


# -- DeLong, when medmtl.evaluation.stats provides it -------------------------------------------
def delong_available() -> bool:
    try:
        from medmtl.evaluation.stats import delong_ci, delong_test  # noqa: F401
    except ImportError:
        return False
    return True


def delong_auc_ci(y: np.ndarray, s: np.ndarray, alpha: float = ALPHA) -> tuple[float, float, float]:
    """(auc, low, high) from ``medmtl.evaluation.stats.delong_ci`` for a binary task."""
    from medmtl.evaluation.stats import delong_ci

    auc, (low, high) = delong_ci(np.asarray(y), np.asarray(s, float), alpha=alpha)
    return float(auc), float(low), float(high)


def delong_p_value(y: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> float:
    """Two-sided p-value of DeLong's paired test (``medmtl.evaluation.stats.delong_test``)."""
    from medmtl.evaluation.stats import delong_test

    _, p = delong_test(np.asarray(y), np.asarray(s1, float), np.asarray(s2, float))
    return float(p)
