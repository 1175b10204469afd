"""Metric functions on numpy arrays (a registry, like ``sklearn.metrics``).

Kept below the engine in the package order so that validation during training and the final
evaluation compute the same numbers with the same code.
"""
from __future__ import annotations

import numpy as np

from medmtl._registry import Registry

METRICS: Registry = Registry("metric")


@METRICS.register("auc", kinds=("binary", "multiclass", "ordinal", "multilabel"), higher_is_better=True)
def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC: binary on the positive class; multiclass as macro one-vs-rest; NaN if one class only."""
    from sklearn.metrics import roc_auc_score

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


@METRICS.register("accuracy", kinds=("binary", "multiclass", "ordinal"), higher_is_better=True)
def accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(y))) if len(y) else float("nan")


@METRICS.register("balanced_accuracy", kinds=("binary", "multiclass", "ordinal"), higher_is_better=True)
def balanced_accuracy(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, np.argmax(scores, axis=1))) if len(y) else float("nan")


@METRICS.register("cross_entropy", kinds=("binary", "multiclass", "ordinal"), higher_is_better=False)
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


@METRICS.register("sensitivity", kinds=("binary", "multiclass", "ordinal"), higher_is_better=True)
def sensitivity(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """True positive rate TP / (TP + FN); macro over classes for multiclass; NaN without positives.

    Args:
        y: Class indices, shape (N,).
        scores: Positive-class scores (N,), or class probabilities (N, K).
        threshold: Binary only: a case is called positive when its score is >= threshold.
    """
    tp, fn, _, _ = _confusion_counts(y, scores, threshold)
    return _macro(tp, tp + fn)


@METRICS.register("specificity", kinds=("binary", "multiclass", "ordinal"), higher_is_better=True)
def specificity(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """True negative rate TN / (TN + FP); macro one-vs-rest for multiclass; NaN without negatives.

    Arguments as :func:`sensitivity`.
    """
    _, _, tn, fp = _confusion_counts(y, scores, threshold)
    return _macro(tn, tn + fp)


@METRICS.register("f1", kinds=("binary", "multiclass", "ordinal"), higher_is_better=True)
def f1(y: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """F1 = 2TP / (2TP + FP + FN) of the positive class (macro over classes for multiclass).

    Arguments as :func:`sensitivity`. NaN when the denominator is 0 (no positive, none predicted).
    """
    tp, fn, _, fp = _confusion_counts(y, scores, threshold)
    return _macro(2 * tp, 2 * tp + fp + fn)


def _overlap(masks: np.ndarray, probs: np.ndarray):
    pred = np.asarray(probs) >= 0.5
    true = np.asarray(masks) > 0
    axes = tuple(range(1, true.ndim))
    inter = (pred & true).sum(axis=axes)
    return inter, pred.sum(axis=axes), true.sum(axis=axes)


@METRICS.register("dice", kinds=("segmentation",), higher_is_better=True)
def dice(masks: np.ndarray, probs: np.ndarray) -> float:
    """Mean per-image Dice at 0.5; an empty prediction of an empty mask scores 1."""
    inter, p, t = _overlap(masks, probs)
    per = np.where(p + t == 0, 1.0, 2 * inter / np.maximum(p + t, 1))
    return float(per.mean()) if len(per) else float("nan")


@METRICS.register("iou", kinds=("segmentation",), higher_is_better=True)
def iou(masks: np.ndarray, probs: np.ndarray) -> float:
    inter, p, t = _overlap(masks, probs)
    union = p + t - inter
    per = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return float(per.mean()) if len(per) else float("nan")


def box_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, 4) x0, y0, x1, y1 arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


@METRICS.register("box_iou", kinds=("detection",), higher_is_better=True)
def box_iou(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean IoU over images with a lesion; ``true``/``pred`` are (N, 5): box then objectness."""
    has = np.asarray(true)[:, 4] > 0.5
    return float(box_ious(true[has, :4], pred[has, :4]).mean()) if has.any() else float("nan")


@METRICS.register("hit_rate", kinds=("detection",), higher_is_better=True)
def hit_rate(true: np.ndarray, pred: np.ndarray) -> float:
    """Share of lesions whose predicted box reaches IoU >= 0.5."""
    has = np.asarray(true)[:, 4] > 0.5
    return float((box_ious(true[has, :4], pred[has, :4]) >= 0.5).mean()) if has.any() else float("nan")


def higher_is_better(name: str) -> bool:
    return bool(METRICS.meta(name)["higher_is_better"])
