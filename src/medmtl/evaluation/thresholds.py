"""Operating points of a binary classifier: Youden's J threshold chosen on validation, applied to test.

A threshold tuned on the test split would report an optimistic sensitivity and specificity, so the
threshold is learned from validation scores only and the test split is scored once with it.
"""
from __future__ import annotations

import numpy as np

from medmtl.metrics import f1, sensitivity, specificity

__all__ = ["youden_threshold", "metrics_at_thresholds"]


def _check_binary(y, scores, name_y: str, name_scores: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1]  # the results layout stores score_<class0>, score_<class1>
    if y.ndim != 1 or scores.ndim != 1 or len(y) != len(scores):
        raise ValueError(f"{name_y} must be 1-D and {name_scores} 1-D (or two columns) of the same length; "
                         f"got {name_y} {y.shape}, {name_scores} {scores.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name_y} must hold binary labels 0/1; got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name_scores} contains NaN or infinite values; drop or impute those rows first")
    return y.astype(int), scores


def youden_threshold(y_val, scores_val) -> float:
    """The threshold on validation scores that maximises Youden's J = sensitivity + specificity - 1.

    Youden, "Index for rating diagnostic tests", Cancer 3(1):32-35, 1950. As in pROC's
    ``coords(roc, "best", best.method="youden")`` (Robin et al., BMC Bioinformatics 12:77, 2011),
    the candidates are the midpoints between consecutive distinct scores, and a case is positive
    when its score is >= the threshold. A midpoint, not an observed score, keeps the threshold
    from sitting exactly on a validation case, so test scores equal to it are not a special case.

    Ties in J go to the lowest threshold (the highest sensitivity): in screening, a missed case
    usually costs more than a false alarm. pROC returns all tied thresholds instead.

    Args:
        y_val: Validation labels, 0 (control) or 1 (case), shape (N,).
        scores_val: Validation positive-class scores, shape (N,) or (N, 2).

    Returns:
        The threshold.

    Raises:
        ValueError: if a class is missing or all scores are equal (no threshold separates anything).
    """
    y, s = _check_binary(y_val, scores_val, "y_val", "scores_val")
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"y_val needs both classes to choose a threshold; got {n_pos} positives and {n_neg} negatives")
    distinct = np.unique(s)
    if len(distinct) < 2:
        raise ValueError(f"scores_val are all equal ({distinct[0]!r}); no threshold separates the classes")
    candidates = (distinct[:-1] + distinct[1:]) / 2
    # counts at or above each candidate, from the sorted scores of each class
    tp = n_pos - np.searchsorted(np.sort(s[y == 1]), candidates, side="left")
    fp = n_neg - np.searchsorted(np.sort(s[y == 0]), candidates, side="left")
    j = tp / n_pos + (n_neg - fp) / n_neg - 1
    return float(candidates[int(np.argmax(j))])  # argmax takes the first, i.e. lowest, of tied maxima


def metrics_at_thresholds(y_val, scores_val, y_test, scores_test) -> dict[str, float]:
    """Sensitivity, specificity and F1 on test, at 0.5 and at the validation Youden threshold.

    Args:
        y_val: Validation labels (0/1), used only to choose the threshold.
        scores_val: Validation positive-class scores, (N,) or (N, 2).
        y_test: Test labels (0/1).
        scores_test: Test positive-class scores, (M,) or (M, 2).

    Returns:
        ``{"threshold_youden": t, "sensitivity@0.5": ..., "specificity@0.5": ..., "f1@0.5": ...,
        "sensitivity@youden": ..., "specificity@youden": ..., "f1@youden": ...}``.

    Example:
        >>> out = metrics_at_thresholds([0, 0, 1, 1], [0.0, 0.5, 0.25, 1.0], [0, 1], [0.2, 0.3])
        >>> out["threshold_youden"], out["sensitivity@youden"], out["sensitivity@0.5"]
        (0.125, 1.0, 0.0)
    """
    t = youden_threshold(y_val, scores_val)
    y, s = _check_binary(y_test, scores_test, "y_test", "scores_test")
    out = {"threshold_youden": t}
    for label, cut in (("0.5", 0.5), ("youden", t)):
        out[f"sensitivity@{label}"] = sensitivity(y, s, threshold=cut)
        out[f"specificity@{label}"] = specificity(y, s, threshold=cut)
        out[f"f1@{label}"] = f1(y, s, threshold=cut)
    return out
