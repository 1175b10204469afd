"""Metric functions on numpy arrays (a registry, like ``sklearn.metrics``).

Kept below the engine in the package order so that validation during training and the final
evaluation compute the same numbers with the same code.
"""
from medmtl.metrics._registry import (
    METRICS,
    MetricInfo,
    compute_metric,
    default_metric,
    higher_is_better,
    scored_metrics,
    table_metrics,
)
from medmtl.metrics.classification import accuracy, auc, balanced_accuracy, cross_entropy, f1, sensitivity, specificity
from medmtl.metrics.dense import box_iou, box_ious, dice, hit_rate, iou

__all__ = ["METRICS", "MetricInfo", "accuracy", "auc", "balanced_accuracy", "box_iou", "box_ious", "compute_metric",
           "cross_entropy", "default_metric", "dice", "f1", "higher_is_better", "hit_rate", "iou", "scored_metrics",
           "sensitivity", "specificity", "table_metrics"]
