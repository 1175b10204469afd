"""Classification metrics on numpy arrays: class indices ``y`` and per-class scores."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from medmtl.kinds import CLASSIFICATION_KINDS, SINGLE_LABEL_KINDS
from medmtl.metrics._registry import METRICS

BINARY = frozenset({"binary"})


@METRICS.register("auc", kinds=CLASSIFICATION_KINDS, higher_is_better=True, scored=CLASSIFICATION_KINDS,
                  tabled=CLASSIFICATION_KINDS, default=CLASSIFICATION_KINDS)
def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC: binary on the positive class; multiclass as macro one-vs-rest; NaN if one class only."""
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    present = np.unique(y[y >= 0]) if y.ndim == 1 else None
    if y.ndim == 1:
        if len(present) < 2:
            return float("nan")
        if scores.ndim == 2 and scores.shape[1] == 2:
            return float(roc_auc_score(y, scores[:, 1]))
        if scores.ndim == 1:
            return float(roc_auc_score(y, scores))
        # macro one-vs-rest over the classes present (a class absent from y has no ROC curve)
        vals = [roc_auc_score(y == c, scores[:, c]) for c in present]
        return float(np.mean(vals))
    cols = [k for k in range(y.shape[1]) if len(np.unique(y[:, k])) == 2]
    return float(np.mean([roc_auc_score(y[:, k], scores[:, k]) for k in cols])) if cols else float("nan")


@METRICS.register("accuracy", kinds=SINGLE_LABEL_KINDS, higher_is_better=True, scored=SINGLE_LABEL_KINDS,
                  tabled=SINGLE_LABEL_KINDS)
def accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(y))) if len(y) else float("nan")


@METRICS.register("balanced_accuracy", kinds=SINGLE_LABEL_KINDS, higher_is_better=True, scored=BINARY)
def balanced_accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    return float(balanced_accuracy_score(y, np.argmax(scores, axis=1))) if len(y) else float("nan")


# cross-entropy: the validation loss of the studies' tables
@METRICS.register("cross_entropy", kinds=SINGLE_LABEL_KINDS, higher_is_better=False, scored=SINGLE_LABEL_KINDS)
def cross_entropy(y: np.ndarray, scores: np.ndarray) -> float:
    p = np.clip(np.asarray(scores, np.float64)[np.arange(len(y)), np.asarray(y)], 1e-12, 1.0)
    return float(-np.mean(np.log(p))) if len(y) else float("nan")


def _confusion_counts(y: np.ndarray, scores: np.ndarray, threshold: float):
    """Per-class (tp, fn, tn, fp) count arrays, one-vs-rest.

    Binary tasks (1-D positive-class scores, or two score columns) have the one class 1, called
    positive at ``score >= threshold``. With more columns the predicted class is the argmax and the
    classes are those present in ``y`` (as in :func:`auc`: an absent class has no sensitivity), so
    the callers' means are macro averages and ``threshold`` is not used.
    """
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or len(scores) != len(y) or scores.ndim not in (1, 2):
        raise ValueError(f"y must be 1-D class indices with one row of scores each; got y {y.shape}, scores {scores.shape}")
    if scores.ndim == 1 or scores.shape[1] == 2:
        positive = scores if scores.ndim == 1 else scores[:, 1]
        pred = (positive >= threshold).astype(int)
        classes = np.array([1])
    else:
        pred = np.argmax(scores, axis=1)
        classes = np.unique(y)
    t = y[:, None] == classes[None, :]
    p = pred[:, None] == classes[None, :]
    return (t & p).sum(0), (t & ~p).sum(0), (~t & ~p).sum(0), (~t & p).sum(0)


def _macro(num: np.ndarray, den: np.ndarray) -> float:
    # NaN (undefined) rather than sklearn's 0-with-a-warning: a bootstrap must skip such resamples,
    # not average a made-up 0 into its interval.
    return float(np.mean(num / den)) if len(den) and (den > 0).all() else float("nan")


# sensitivity/specificity (positive = classes[1] at score >= 0.5): the diagnostic studies' tables
@METRICS.register("sensitivity", kinds=SINGLE_LABEL_KINDS, higher_is_better=True, scored=BINARY, threshold=True)
def sensitivity(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """True positive rate TP / (TP + FN); macro over classes for multiclass; NaN without positives.

    Args:
        y: Class indices, shape (N,).
        scores: Positive-class scores (N,), or class probabilities (N, K).
        threshold: Binary only: a case is called positive when its score is >= threshold.
    """
    tp, fn, _, _ = _confusion_counts(y, scores, threshold)
    return _macro(tp, tp + fn)


@METRICS.register("specificity", kinds=SINGLE_LABEL_KINDS, higher_is_better=True, scored=BINARY, threshold=True)
def specificity(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """True negative rate TN / (TN + FP); macro one-vs-rest for multiclass; NaN without negatives.

    Arguments as :func:`sensitivity`.
    """
    _, _, tn, fp = _confusion_counts(y, scores, threshold)
    return _macro(tn, tn + fp)


@METRICS.register("f1", kinds=SINGLE_LABEL_KINDS, higher_is_better=True, scored=BINARY, threshold=True)
def f1(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """F1 = 2TP / (2TP + FP + FN) of the positive class (macro over classes for multiclass).

    Arguments as :func:`sensitivity`. NaN when the denominator is 0 (no positive, none predicted).
    """
    tp, fn, _, fp = _confusion_counts(y, scores, threshold)
    return _macro(2 * tp, 2 * tp + fp + fn)
