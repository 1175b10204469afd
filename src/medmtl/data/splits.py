"""Train/val/test assignment: official splits kept, otherwise seeded, stratified and group-aware.

Fractions are met by cutting the groups into equal StratifiedGroupKFold buckets (20 for the
usual 5 % steps) and handing whole buckets to train, val and test, so one patient's images never
straddle two splits and each split keeps the class balance.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medmtl._registry import Registry
from medmtl.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitterInfo:
    """``official``: the splitter keeps the dataset's own split (so its groups come from the reader,
    never from duplicate merging, which could move an image across the official split)."""

    official: bool


SPLITTERS: Registry = Registry("split method", SplitterInfo)


def _buckets(fractions, n_groups: int) -> int:
    denom = math.lcm(*(Fraction(f).limit_denominator(100).denominator for f in fractions if f > 0))
    return max(2, min(denom, n_groups))


def _fold_ids(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold number of every sample under StratifiedGroupKFold(shuffle, seed)."""
    folds = np.full(len(y), -1)
    _, counts = np.unique(y, return_counts=True)
    if len(counts) and n_splits > counts.max():
        # sklearn refuses when every class has fewer members than folds (a small dataset cut into
        # 5 % buckets): the folds stay group-aware, only the stratification is given up
        y = np.zeros(len(y), dtype=np.int64)
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer members than folds; the split is still valid
        warnings.simplefilter("ignore", UserWarning)
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        for k, (_, test) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
            folds[test] = k
    return folds


def holdout(y, groups, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """Split names per sample for train/val/test ``fractions`` (whole groups, stratified by ``y``)."""
    y, groups = np.asarray(y), np.asarray(groups)
    n_groups = len(np.unique(groups))
    n = _buckets(fractions, n_groups)
    folds = _fold_ids(y, groups, n, seed)
    counts = np.floor(np.asarray(fractions) * n + 1e-9).astype(int)
    counts[0] += n - counts.sum()  # rounding leftovers go to train
    bounds = np.cumsum(counts)
    out = np.empty(len(y), dtype=object)
    for k in range(n):
        out[folds == k] = SPLITS[int(np.searchsorted(bounds, k, side="right"))]
    return out


def carve(y, groups, base: np.ndarray, fraction: float, seed: int, source="train", target="val") -> np.ndarray:
    """Move about ``fraction`` of ``source``'s groups (stratified) to ``target``."""
    out = np.asarray(base, dtype=object).copy()
    idx = np.flatnonzero(out == source)
    if fraction <= 0 or len(idx) == 0:
        return out
    sub = holdout(np.asarray(y)[idx], np.asarray(groups)[idx], (1 - fraction, fraction, 0.0), seed)
    out[idx[sub == "val"]] = target
    return out


def kfold(y, groups, n_splits: int, fold: int, val_fraction: float, seed: int) -> np.ndarray:
    """Fold ``fold`` of ``n_splits`` is test; ``val_fraction`` of the rest becomes val."""
    folds = _fold_ids(np.asarray(y), np.asarray(groups), n_splits, seed)
    base = np.where(folds == fold, "test", "train").astype(object)
    return carve(y, groups, base, val_fraction, seed + 1)


def check_groups(ids, groups, splits, where: str) -> None:
    """A group (patient) present in two splits is an error: the test set would leak into training."""
    seen: dict = {}
    for rid, g, s in zip(ids, groups, splits):
        if g in seen and seen[g][1] != s:
            other, s0 = seen[g]
            raise DataError(f"{where}: group {g!r} is in two splits: {other!r} in {s0!r} and {rid!r} in {s!r}")
        seen.setdefault(g, (rid, s))


# A splitter takes (y, groups, official split per row, the task's SplitConfig, where) and returns
# the split name of each row; ``where`` is the task's config key for messages.
@SPLITTERS.register("official", official=True)
def official_split(y, groups, official, split_cfg, where: str) -> np.ndarray:
    """The dataset's own split; ``val_fraction`` carves validation from train when it has none."""
    official = np.asarray(official, dtype=object)
    if any(s is None for s in official):
        raise ConfigError(f"{where}.split.method='official' but the dataset has no official split "
                          "(use method: holdout or kfold)")
    if "val" in set(official):
        return official.copy()
    return carve(y, groups, official, split_cfg.val_fraction, split_cfg.seed)


@SPLITTERS.register("holdout", official=False)
def holdout_split(y, groups, official, split_cfg, where: str) -> np.ndarray:
    """Seeded, stratified, group-aware train/val/test ``fractions``."""
    return holdout(y, groups, split_cfg.fractions, split_cfg.seed)


@SPLITTERS.register("kfold", official=False)
def kfold_split(y, groups, official, split_cfg, where: str) -> np.ndarray:
    """Fold ``fold`` of ``n_splits`` (StratifiedGroupKFold) is test, ``val_fraction`` of the rest val."""
    return kfold(y, groups, split_cfg.n_splits, split_cfg.fold, split_cfg.val_fraction, split_cfg.seed)


def create_split(method: str, y, groups, official, split_cfg, where: str) -> np.ndarray:
    """The split names of a task's rows by the registered ``method`` (the one door to a splitter)."""
    return SPLITTERS.get(method, f"{where}.split.method")(y, groups, official, split_cfg, where)
