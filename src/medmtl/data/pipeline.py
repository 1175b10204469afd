"""From an experiment's task list to arrays ready for training.

``prepare`` runs the data layer in order: read every distinct reader once (tasks with the same
reader share one record table, so a BUSI image carries its class, mask and box), decode into the
cache, find duplicates, merge groups, assign splits (written to the run dir and reused), encode
labels per task (missing labels stay missing) and apply the cross-dataset leakage guard.
It takes the validated config objects by duck typing so the data layer never imports the config
layer above it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmtl.data import splits as splitting
from medmtl.data.cache import CachedImages, DecodeCache
from medmtl.data.duplicates import UnionFind, count_groups, duplicate_groups
from medmtl.data.records import Skipped, TargetInfo
from medmtl.errors import ConfigError, DataError

log = logging.getLogger("medmtl.data")
CLASSIFICATION = ("binary", "multiclass", "ordinal", "multilabel")


@dataclass
class TaskSpec:
    """A task as the rest of medmtl sees it: names resolved, classes known."""

    name: str
    kind: str
    classes: tuple[str, ...]
    target: str
    source: str
    role: str = "main"
    loss_weight: float = 1.0
    metric: str = "auc"
    group_key: str = "patient"
    domain: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class SourceData:
    """One reader's records after decoding, with groups and splits (rows align with ``cached``)."""

    key: str
    tasks: list[str]
    cached: CachedImages
    groups: np.ndarray
    split: np.ndarray
    duplicate_labels: np.ndarray
    exact_duplicate_groups: int
    near_duplicate_groups: int
    cross_split_duplicates: int
    skipped: list[Skipped]
    split_file: Path | None = None

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.cached.records]

    def __len__(self) -> int:
        return len(self.cached.records)


@dataclass
class PreparedData:
    tasks: dict[str, TaskSpec]
    sources: dict[str, SourceData]
    labels: dict[str, np.ndarray]
    excluded: dict[str, np.ndarray] = field(default_factory=dict)   # task -> rows kept out of training
    leakage: dict = field(default_factory=dict)                     # filled by the leakage guard

    def source_of(self, task: str) -> SourceData:
        return self.sources[self.tasks[task].source]

    def has_label(self, task: str) -> np.ndarray:
        lab = self.labels[task]
        return ~np.isnan(lab).all(axis=1) if lab.ndim == 2 else lab >= 0

    def rows(self, task: str, split: str) -> np.ndarray:
        """Row indices (into the task's source) of labelled images of ``split``.

        Training rows exclude images the leakage guard removed (copies of evaluation images).
        """
        src = self.source_of(task)
        mask = self.has_label(task) & (src.split == split)
        if split == "train" and task in self.excluded:
            mask &= ~self.excluded[task]
        return np.flatnonzero(mask)


# -- encoding --------------------------------------------------------------------------------
def encode_labels(task: TaskSpec, records, source_name: str) -> np.ndarray:
    """Class indices (int64, -1 = missing), or (N, C) float with NaN rows for multilabel."""
    n = len(records)
    if task.kind == "multilabel":
        out = np.full((n, task.num_classes), np.nan, np.float32)
    else:
        out = np.full(n, -1, np.int64)
    for i, rec in enumerate(records):
        if task.target not in rec.labels:
            continue
        value = rec.labels[task.target]
        if task.kind in ("segmentation", "detection"):
            ok = (task.kind == "segmentation" and bool(rec.masks)) or (task.kind == "detection" and rec.boxes is not None)
            out[i] = 1 if ok else -1
        elif task.kind == "multilabel":
            names = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(";") if v]
            out[i] = 0
            for v in names:
                out[i, _class_index(task, v, rec)] = 1
        else:
            out[i] = _class_index(task, value, rec)
    return out


def _class_index(task: TaskSpec, value, rec) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < task.num_classes:
            return int(value)
    elif str(value) in task.classes:
        return task.classes.index(str(value))
    raise DataError(f"task {task.name!r}: label {value!r} of {rec.source.describe()} (id {rec.id!r}) is not one of "
                    f"the declared classes {list(task.classes)}")


def resolve_task(tcfg, targets: dict[str, TargetInfo], source: str, where: str) -> TaskSpec:
    if tcfg.target not in targets:
        raise ConfigError(f"{where}.target={tcfg.target!r}: the {tcfg.reader.name!r} reader provides {sorted(targets)}")
    info = targets[tcfg.target]
    classes = tuple(tcfg.classes) if tcfg.classes else info.classes
    if tcfg.kind in ("segmentation", "detection"):
        classes = classes or ("background", "lesion")
    elif not classes:
        raise ConfigError(f"{where}.classes: the {tcfg.reader.name!r} reader does not name the classes of "
                          f"target {tcfg.target!r}; list them")
    if tcfg.kind == "binary" and len(classes) != 2:
        raise ConfigError(f"{where}.classes: a binary task has 2 classes; the data has {list(classes)} "
                          "(declare classes, or use kind: multiclass)")
    return TaskSpec(tcfg.name, tcfg.kind, tuple(classes), tcfg.target, source, tcfg.role, tcfg.loss_weight,
                    tcfg.metric, tcfg.group_key, tcfg.domain)


# -- groups and splits ------------------------------------------------------------------------
def merge_groups(groups: np.ndarray, dup_labels: np.ndarray) -> np.ndarray:
    """Merge patient groups linked by a duplicate, so all copies land in one split."""
    names, gid = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    uf = UnionFind(len(names))
    first: dict[int, int] = {}
    for i, d in enumerate(dup_labels):
        if d in first:
            uf.union(gid[first[d]], gid[i])
        else:
            first[d] = i
    roots = np.array([uf.find(g) for g in gid])
    return names[roots]


def _split_key(split_cfg) -> str:
    return hashlib.sha1(json.dumps(split_cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:8]


def assign_splits(ids, y, groups, official, split_cfg, where: str) -> np.ndarray:
    official = np.asarray(official, dtype=object)
    if split_cfg.method == "official":
        if any(s is None for s in official):
            raise ConfigError(f"{where}.split.method='official' but the dataset has no official split "
                              "(use method: holdout or kfold)")
        out = splitting.carve(y, groups, official, split_cfg.val_fraction, split_cfg.seed) \
            if "val" not in set(official) else official.copy()
    elif split_cfg.method == "holdout":
        out = splitting.holdout(y, groups, split_cfg.fractions, split_cfg.seed)
    else:
        out = splitting.kfold(y, groups, split_cfg.n_splits, split_cfg.fold, split_cfg.val_fraction, split_cfg.seed)
    return out


def _load_or_write_split(path: Path, ids, groups, compute) -> np.ndarray:
    """Reuse the split file of an earlier run of the same settings; write it otherwise."""
    import pandas as pd

    if path.is_file():
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        if sorted(table["id"]) != sorted(ids):
            raise DataError(f"{path} was written for another set of images ({len(table)} rows, now {len(ids)}); "
                            "delete it to split again")
        by_id = dict(zip(table["id"], table["split"]))
        return np.array([by_id[i] for i in ids], dtype=object)
    split = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pd.DataFrame({"id": ids, "group": groups, "split": split}).to_csv(tmp, index=False)
    tmp.replace(path)
    return split


# -- the whole pipeline -------------------------------------------------------------------------
def _source_key(tcfg) -> str:
    return f"{tcfg.reader.key()}-{tcfg.image.mode}{tcfg.image.size}"


def prepare(cfg, *, progress: bool = True, write_splits: bool = True) -> PreparedData:
    """Run the data layer for every task of ``cfg`` (an ``ExperimentConfig``)."""
    by_source: dict[str, list[int]] = {}
    for i, t in enumerate(cfg.tasks):
        by_source.setdefault(_source_key(t), []).append(i)
    tasks, sources, labels = {}, {}, {}
    for key, idx in by_source.items():
        first = cfg.tasks[idx[0]]
        for j in idx[1:]:
            if cfg.tasks[j].split != first.split:
                raise ConfigError(f"tasks[{j}].split differs from tasks[{idx[0]}].split, but both tasks read the same "
                                  f"images ({first.reader.name}); images shared by tasks need one split")
        result = first.reader.read()
        specs = [resolve_task(cfg.tasks[j], result.targets, key, f"tasks[{j}]") for j in idx]
        cache = DecodeCache(cfg.cache_dir, first.image.size, first.image.mode, cfg.leakage.thumbnail)
        cached = cache.load(result.records, workers=cfg.decode_workers, progress=progress, desc=first.name)
        skipped = list(result.skipped) + cached.skipped
        for s in skipped:
            log.warning("skipped %s: %s", s.path, s.reason)
        src = _build_source(cfg, key, specs, cached, skipped, first, idx[0], write_splits)
        sources[key] = src
        for spec in specs:
            tasks[spec.name] = spec
            labels[spec.name] = encode_labels(spec, cached.records, key)
    data = PreparedData(tasks, sources, labels)
    try:
        from medmtl.data.leakage import apply_leakage_guard
    except ImportError:  # pragma: no cover - until the guard lands
        return data
    apply_leakage_guard(data, cfg.leakage)
    return data


def _build_source(cfg, key, specs, cached, skipped, tcfg, index, write_splits) -> SourceData:
    d = cfg.duplicates
    dup = duplicate_groups(cached.pixel_hash, cached.phash, exact=d.exact, near=d.near, max_distance=d.max_distance)
    exact = duplicate_groups(cached.pixel_hash, cached.phash, exact=True, near=False)
    records = cached.records
    ids = [r.id for r in records]
    reader_groups = np.array([r.group for r in records], dtype=object)
    official = np.array([r.split for r in records], dtype=object)
    strat = next((s for s in specs if s.kind in CLASSIFICATION), None)
    y = np.array([str(r.labels.get(strat.target, "?")) if strat else "?" for r in records])
    where = f"tasks[{index}]"
    if tcfg.split.method == "official":
        splitting.check_groups(ids, reader_groups, official, f"{tcfg.name} (official split)")
        groups = reader_groups
    else:
        groups = merge_groups(reader_groups, dup) if d.policy == "group" else reader_groups

    def compute():
        return assign_splits(ids, y, groups, official, tcfg.split, where)

    split_file = None
    if write_splits:
        split_file = Path(cfg.run_dir) / "splits" / f"{tcfg.name}-{key}-{_split_key(tcfg.split)}.csv"
        split = _load_or_write_split(split_file, ids, list(groups), compute)
    else:
        split = compute()
    splitting.check_groups(ids, groups, split, f"{tcfg.name} split")
    crossing = _cross_split_duplicates(dup, split)
    if crossing:
        log.warning("%s: %d duplicate images sit in a different split from a copy of themselves", tcfg.name, crossing)
    return SourceData(key, [s.name for s in specs], cached, np.asarray(groups, dtype=object), np.asarray(split, dtype=object),
                      dup, count_groups(exact), count_groups(dup), crossing, skipped, split_file)


def _cross_split_duplicates(dup: np.ndarray, split: np.ndarray) -> int:
    """Images whose duplicate group spans more than one split (only possible with official splits)."""
    spans: dict = {}
    for g, s in zip(dup, split):
        spans.setdefault(g, set()).add(s)
    crossing = {g for g, ss in spans.items() if len(ss) > 1}
    return int(sum(1 for g in dup if g in crossing))
