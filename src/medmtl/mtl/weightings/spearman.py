"""``spearman``: auxiliary tasks weighted by their label correlation with the main task (Fang et al. 2019)."""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from scipy.stats import spearmanr

from medmtl.errors import ConfigError
from medmtl.mtl.weightings._base import WEIGHTINGS
from medmtl.mtl.weightings.main_aux import _MainAuxBase

__all__ = ["SpearmanWeighting"]

log = logging.getLogger("medmtl.mtl")


def _check_labels(value, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be a 1-D array of class indices (-1 = missing); got shape {arr.shape}. "
                         "Spearman weights are defined for single-label tasks only")
    if arr.dtype.kind not in "iuf":
        raise ConfigError(f"{name} must hold class indices; got dtype {arr.dtype}")
    return arr.astype(np.float64)


@WEIGHTINGS.register("spearman", needs_per_task_grads=False, stateful=False, needs_labels=True,
                     has_parameters=False, extra=None)
class SpearmanWeighting(_MainAuxBase):
    """``main_aux`` with ``w_k`` = Spearman correlation of task ``k``'s labels with the main task's (Fang et al., SPIE Medical Imaging 2019, sec. 2.1).

    On the training images labelled for both tasks, ``(r_k, p_k) = spearmanr(main labels, labels of k)``.
    Task ``k`` is dropped (``w_k = 0``, logged on ``medmtl.mtl`` with ``r`` and ``p``) unless
    ``p_k < alpha``; a kept task gets ``w_k = |r_k|``, not renormalised, as in the paper (whose kept
    tasks had r = 0.24-0.38). If none is kept the loss is the main loss alone.

    Labels enter as class indices in the config's class order, so the statistic is meaningful for
    binary and ordered classes (normal < benign < malignant). The absolute value is used because
    the sign only reflects which class was listed first (the paper reports positive r only), and a
    negative weight would push the trunk to *fail* the auxiliary task. For nominal classes the
    index order is arbitrary; declare such a task binary (e.g. NORM vs abnormal) for a meaningful r.

    Args:
        m: The main task's weight, in [0, 1].
        alpha: Significance level of Spearman's test; tasks with ``p >= alpha`` are dropped.

    Attributes:
        report_: ``{auxiliary task: {"r", "p", "n", "kept", "weight"}}`` for the run report.

    Exactly one task must have role ``"main"``; ``setup`` needs ``train_labels``.
    """

    def __init__(self, m: float = 0.7, alpha: float = 0.05):
        super().__init__()
        self.m = m
        self.alpha = alpha

    def _aux_weights(self, tasks, train_labels) -> dict[str, float]:
        alpha = float(self.alpha)
        if not 0.0 < alpha <= 1.0:
            raise ConfigError(f"spearman weighting: alpha={self.alpha!r} is a significance level and must lie in (0, 1]")
        if train_labels is None or self.main_ not in train_labels:
            raise ConfigError(f"the spearman weighting needs train_labels with the main task {self.main_!r}'s labels "
                             "on the training images (setup(tasks, train_labels={task: labels}))")
        y = _check_labels(train_labels[self.main_], f"train_labels[{self.main_!r}]")
        weights, report = {}, {}
        for task in self.aux_tasks_:
            r = p = math.nan
            n = 0
            if task not in train_labels:
                why = "has no labels on the main task's training images (another source)"
            else:
                a = _check_labels(train_labels[task], f"train_labels[{task!r}]")
                if a.shape != y.shape:
                    raise ConfigError(f"train_labels[{task!r}] has {a.shape[0]} rows but the main task's has {y.shape[0]}; "
                                     "both must cover the same training images in the same order")
                both = (y >= 0) & (a >= 0)
                n = int(both.sum())
                if n < 3 or np.unique(y[both]).size < 2 or np.unique(a[both]).size < 2:
                    why = f"cannot be tested: {n} images labelled for both, with constant labels in one of them"
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = spearmanr(y[both], a[both])
                    r, p = float(res.statistic), float(res.pvalue)
                    why = f"Spearman r={r:.3f}, p={p:.3g} {'<' if p < alpha else '>='} alpha={alpha:g} on n={n} images"
            kept = bool(math.isfinite(p) and p < alpha)
            weights[task] = abs(r) if kept else 0.0
            report[task] = {"r": r, "p": p, "n": n, "kept": kept, "weight": weights[task]}
            if kept:
                log.info("spearman weighting: auxiliary task %r kept with w=|r|=%.3f (%s)", task, abs(r), why)
            else:
                log.warning("spearman weighting: auxiliary task %r dropped (weight 0): %s "
                            "(labels compared with main task %r)", task, why, self.main_)
        if self.aux_tasks_ and not any(weights.values()):
            log.warning("spearman weighting: no auxiliary task correlates with main task %r at p < %g; "
                        "the loss is the main task's loss alone", self.main_, alpha)
        self.report_ = report
        return weights
