"""Image -> case aggregation: a lesion's or patient's score is the mean of its images' scores."""
from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger("medmtl.evaluation")


def mixed_groups(rows: pd.DataFrame) -> list:
    """The groups whose images carry different labels (they have no single truth as one case)."""
    labels = rows.groupby("group")["y_true"].nunique()
    return list(labels[labels > 1].index)


def aggregate_groups(rows: pd.DataFrame, score_cols: list[str], conflicts: str = "error") -> pd.DataFrame:
    """One row per group (lesion or patient): the mean of its images' scores.

    A group's label is its images' label; groups whose images disagree have no single truth for a
    mean score: ``conflicts="error"`` refuses them, ``"drop"`` leaves them out of the group-level
    scores with a warning (BUSI files a few near-duplicate lesions as both benign and malignant).
    """
    bad = mixed_groups(rows)
    if bad:
        if conflicts != "drop":
            raise ValueError(f"groups {bad[:5]} hold images of different classes; they cannot be scored as one case")
        log.warning("%d groups hold images of different classes and are left out of the group-level scores: %s",
                    len(bad), bad[:5])
        rows = rows[~rows["group"].isin(bad)]
    agg = rows.groupby("group", sort=True).agg({"y_true": "first", **{c: "mean" for c in score_cols}})
    return agg.reset_index()
