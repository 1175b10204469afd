"""Segmentation (masks) and detection (one box plus objectness per image) metrics."""
from __future__ import annotations

import numpy as np

from medmtl.metrics._registry import METRICS

SEG, DET = frozenset({"segmentation"}), frozenset({"detection"})


def _overlap(masks: np.ndarray, probs: np.ndarray):
    pred = np.asarray(probs) >= 0.5
    true = np.asarray(masks) > 0
    axes = tuple(range(1, true.ndim))
    inter = (pred & true).sum(axis=axes)
    return inter, pred.sum(axis=axes), true.sum(axis=axes)


def dice_per_image(masks: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Dice of each image at 0.5; an empty prediction of an empty mask scores 1."""
    inter, p, t = _overlap(masks, probs)
    return np.where(p + t == 0, 1.0, 2 * inter / np.maximum(p + t, 1))


def iou_per_image(masks: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """IoU of each image at 0.5; an empty prediction of an empty mask scores 1."""
    inter, p, t = _overlap(masks, probs)
    union = p + t - inter
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _mean(per: np.ndarray) -> float:
    return float(per.mean()) if len(per) else float("nan")


@METRICS.register("dice", kinds=SEG, higher_is_better=True, scored=SEG, tabled=SEG, default=SEG)
def dice(masks: np.ndarray, probs: np.ndarray) -> float:
    """Mean per-image Dice at 0.5 (:func:`dice_per_image`)."""
    return _mean(dice_per_image(masks, probs))


@METRICS.register("iou", kinds=SEG, higher_is_better=True, scored=SEG, tabled=SEG)
def iou(masks: np.ndarray, probs: np.ndarray) -> float:
    """Mean per-image IoU at 0.5 (:func:`iou_per_image`)."""
    return _mean(iou_per_image(masks, probs))


def box_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, 4) x0, y0, x1, y1 arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


@METRICS.register("box_iou", kinds=DET, higher_is_better=True, scored=DET, tabled=DET, default=DET)
def box_iou(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean IoU over images with a lesion; ``true``/``pred`` are (N, 5): box then objectness."""
    has = np.asarray(true)[:, 4] > 0.5
    return float(box_ious(true[has, :4], pred[has, :4]).mean()) if has.any() else float("nan")


@METRICS.register("hit_rate", kinds=DET, higher_is_better=True, scored=DET, tabled=DET)
def hit_rate(true: np.ndarray, pred: np.ndarray) -> float:
    """Share of lesions whose predicted box reaches IoU >= 0.5."""
    has = np.asarray(true)[:, 4] > 0.5
    return float((box_ious(true[has, :4], pred[has, :4]) >= 0.5).mean()) if has.any() else float("nan")
