"""From an experiment's task list to arrays ready for training.

``prepare`` runs the data layer in order: read every distinct reader once (tasks with the same
reader share one record table, so a BUSI image carries its class, mask and box), decode into the
cache, find duplicates, merge groups (across datasets too, where copies of one image are split
by medmtl in both), assign splits (written to the run dir and reused), encode labels per task
(missing labels stay missing) and apply the cross-dataset leakage guard.
It takes the validated config objects by duck typing so the data layer never imports the config
layer above it.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medmtl.data import splits as splitting
from medmtl.data.cache import CachedImages, DecodeCache
from medmtl.data.duplicates import UnionFind, count_groups, duplicate_groups
from medmtl.data.leakage import Signatures, apply_leakage_guard, find_copies
from medmtl.data.records import Skipped, TargetInfo
from medmtl.errors import ConfigError, DataError
from medmtl.kinds import CLASSIFICATION_KINDS

log = logging.getLogger("medmtl.data")
INNER_VAL_FRACTION = 0.15
COPIES_PREFIX = "copies:"  # names a split group that holds copies of one image from several datasets


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
    evaluate_at: str = "image"
    unlisted: str = "error"   # "drop": labels outside ``classes`` count as missing for this task
    binarize: str | None = None       # "median": a continuous target cut at ``threshold``
    threshold: float | None = None    # learned from the training split by ``binarize_at_median``

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
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.cached.records]

    def __len__(self) -> int:
        return len(self.cached.records)


@dataclass
class PreparedData:
    """Every task's labels over its source's rows, with splits and the leakage guard's verdict.

    ``leakage`` (empty when the guard is off) holds ``cross_duplicates`` {task: {other task:
    images with a copy there}}, ``excluded`` {task: {other task: training images removed}},
    ``excluded_from_validation`` {task: {other task: validation images left out as copies of its test
    images}} and,
    in memory only, ``pairs`` {"task|other": (P, 2) matched row pairs} per pair of sources.
    """

    tasks: dict[str, TaskSpec]
    sources: dict[str, SourceData]
    labels: dict[str, np.ndarray]
    excluded: dict[str, np.ndarray] = field(default_factory=dict)   # task -> rows kept out of training
    excluded_val: dict[str, np.ndarray] = field(default_factory=dict)  # task -> rows kept out of validation
    leakage: dict = field(default_factory=dict)                     # filled by the leakage guard
    cache_dir: Path | None = None                                   # decode cache root (cached matches)
    # the config dump they were prepared from: another process (a DDP rank) prepares the same data
    prepared_from: dict | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> str:
        """A digest of every task's labels and split rows (after the leakage guard): equal digests,
        equal training and evaluation data."""
        h = hashlib.blake2b(digest_size=16)
        for task in sorted(self.tasks):
            h.update(task.encode())
            h.update(np.ascontiguousarray(self.labels[task]).tobytes())
            for split in ("train", "val", "test"):
                h.update(self.rows(task, split).tobytes())
        return h.hexdigest()

    def source_of(self, task: str) -> SourceData:
        return self.sources[self.tasks[task].source]

    def has_label(self, task: str) -> np.ndarray:
        lab = self.labels[task]
        return ~np.isnan(lab).all(axis=1) if lab.ndim == 2 else lab >= 0

    def rows(self, task: str, split: str) -> np.ndarray:
        """Row indices (into the task's source) of labelled images of ``split``.

        Training rows exclude images the leakage guard removed (copies of evaluation images), and
        validation rows the copies of another task's test images (selection would see them).
        """
        src = self.source_of(task)
        mask = self.has_label(task) & (src.split == split)
        if split == "train" and task in self.excluded:
            mask &= ~self.excluded[task]
        if split == "val" and task in self.excluded_val:
            mask &= ~self.excluded_val[task]
        return np.flatnonzero(mask)


# -- encoding --------------------------------------------------------------------------------
def encode_labels(task: TaskSpec, records, source_name: str) -> np.ndarray:
    """Class indices (int64, -1 = missing), or (N, C) float with NaN rows for multilabel."""
    n = len(records)
    if task.kind == "multilabel":
        out = np.full((n, task.num_classes), np.nan, np.float32)
    else:
        out = np.full(n, -1, np.int64)
    if task.binarize is not None and task.threshold is None:
        raise DataError(f"task {task.name!r}: binarize={task.binarize!r} but no threshold was learned; "
                        "binarize_at_median(task, records, split) sets it from the training split first")
    for i, rec in enumerate(records):
        if task.target not in rec.labels:
            continue
        value = rec.labels[task.target]
        if task.binarize is not None:
            out[i] = int(_numeric(task, value, rec) > task.threshold)   # ties go to the low class
        elif task.kind in ("segmentation", "detection"):
            ok = (task.kind == "segmentation" and bool(rec.masks)) or (task.kind == "detection" and rec.boxes is not None)
            out[i] = 1 if ok else -1
        elif task.kind == "multilabel":
            names = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(";") if v]
            out[i] = 0
            for v in names:
                k = _class_index(task, v, rec)
                if k >= 0:
                    out[i, k] = 1
        else:
            out[i] = _class_index(task, value, rec)
    return out


def _numeric(task: TaskSpec, value, rec) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"task {task.name!r} (binarize: {task.binarize}): label {value!r} of target {task.target!r} "
                        f"of {rec.source.describe()} (id {rec.id!r}) is not a number") from None


def binarize_at_median(task: TaskSpec, records, split: np.ndarray) -> str:
    """Set ``task.threshold`` to the median of the task's values on the TRAINING split; returns a note.

    Only training records count, so the validation and test labels cannot shape the cut (changing
    a test value leaves every label unchanged). Values above the median get class 1 (``classes[1]``).
    """
    values = np.array([_numeric(task, r.labels[task.target], r) for r, s in zip(records, split)
                       if s == "train" and task.target in r.labels], dtype=np.float64)
    if not len(values):
        raise DataError(f"task {task.name!r}: binarize: median needs training images with a {task.target!r} value; "
                        "the training split has none")
    task.threshold = float(np.median(values))
    return (f"task {task.name}: {task.target} binarised at its training median {task.threshold:.4g} "
            f"({len(values)} training images; > median = {task.classes[1]!r})")


def _class_index(task: TaskSpec, value, rec) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < task.num_classes:
            return int(value)
    elif str(value) in task.classes:
        return task.classes.index(str(value))
    if task.unlisted == "drop":
        return -1  # a class the task leaves out (BUSI normal in benign vs malignant): no label here
    raise DataError(f"task {task.name!r}: label {value!r} of {rec.source.describe()} (id {rec.id!r}) is not one of "
                    f"the declared classes {list(task.classes)}")


def resolve_task(tcfg, targets: dict[str, TargetInfo], source: str, where: str) -> TaskSpec:
    if tcfg.target not in targets:
        raise ConfigError(f"{where}.target={tcfg.target!r}: the {tcfg.reader.name!r} reader provides {sorted(targets)}")
    info = targets[tcfg.target]
    binarize = getattr(tcfg, "binarize", None)
    if info.kind == "continuous" and binarize is None and tcfg.kind not in ("segmentation", "detection"):
        raise ConfigError(f"{where} ({tcfg.name}).target={tcfg.target!r} is a continuous value of the "
                          f"{tcfg.reader.name!r} reader, not classes; add binarize: median (kind: binary)")
    if binarize is not None and info.kind != "continuous":
        raise ConfigError(f"{where} ({tcfg.name}).binarize={binarize!r}: target {tcfg.target!r} of the "
                          f"{tcfg.reader.name!r} reader is {info.kind} (classes {list(info.classes or ())}), not "
                          "numeric; binarize applies to continuous targets only")
    classes = tuple(tcfg.classes) if tcfg.classes else info.classes
    if binarize is not None:
        classes = classes or ("low", "high")
    if tcfg.kind in ("segmentation", "detection"):
        classes = classes or ("background", "lesion")
    elif not classes:
        raise ConfigError(f"{where}.classes: the {tcfg.reader.name!r} reader does not name the classes of "
                          f"target {tcfg.target!r}; list them")
    if tcfg.kind == "binary" and len(classes) != 2:
        raise ConfigError(f"{where}.classes: a binary task has 2 classes; the data has {list(classes)} "
                          "(declare classes, or use kind: multiclass)")
    return TaskSpec(tcfg.name, tcfg.kind, tuple(classes), tcfg.target, source, tcfg.role, tcfg.loss_weight,
                    tcfg.metric, tcfg.group_key, tcfg.domain, tcfg.evaluate_at, tcfg.unlisted, tcfg.binarize)


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
    return splitting.create_split(split_cfg.method, y, groups, official, split_cfg, where)


def _load_or_write_split(path: Path, ids, groups, compute) -> np.ndarray:
    """Reuse the split file of an earlier run of the same settings; write it otherwise."""
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


@dataclass
class _Loaded:
    """One source after reading and decoding, before its groups and split are settled."""

    key: str
    index: int                 # position of its first task in the config
    tcfg: object               # that task's config (reader, image, split)
    specs: list[TaskSpec]
    cached: CachedImages
    skipped: list[Skipped]
    dup: np.ndarray | None = None     # duplicate group per row (inside this source)
    groups: np.ndarray | None = None  # split groups: reader groups merged by duplicates (and copies)
    partners: tuple[str, ...] = ()  # task names of other sources whose copies share its groups


def prepare(cfg, *, progress: bool = True, write_splits: bool = True) -> PreparedData:
    """Run the data layer for every task of ``cfg`` (an ``ExperimentConfig``)."""
    by_source: dict[str, list[int]] = {}
    for i, t in enumerate(cfg.tasks):
        by_source.setdefault(_source_key(t), []).append(i)
    loaded = [_load_source(cfg, key, idx, progress) for key, idx in by_source.items()]
    for item in loaded:
        _group_source(cfg, item)
    _link_copies(cfg, loaded)
    tasks, sources, labels, thresholds = {}, {}, {}, {}
    assigned: dict[str, str] = {}  # cross-dataset group -> split, from the sources split so far
    for item in loaded:
        sources[item.key] = _build_source(cfg, item, assigned, write_splits)
        for spec in item.specs:
            if spec.binarize == "median":   # after the split: the cut is learned from training images only
                sources[item.key].notes.append(binarize_at_median(spec, item.cached.records, sources[item.key].split))
                log.info("%s", sources[item.key].notes[-1])
                thresholds[spec.name] = {"target": spec.target, "binarize": spec.binarize,
                                         "threshold": spec.threshold, "classes": list(spec.classes)}
            tasks[spec.name] = spec
            labels[spec.name] = encode_labels(spec, item.cached.records, item.key)
    data = PreparedData(tasks, sources, labels, cache_dir=Path(cfg.cache_dir))
    if thresholds and write_splits:
        # beside the split files they were learned from, for the report; merged by task, since
        # several configs (an experiment's applications) may prepare their tasks into one run dir
        path = Path(cfg.run_dir) / "splits" / "thresholds.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        known = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**known, **thresholds}, indent=2))
    apply_leakage_guard(data, cfg.leakage)
    dump = getattr(cfg, "model_dump", None)
    data.prepared_from = dump(mode="json") if dump else None
    return data


def _load_source(cfg, key: str, idx: list[int], progress: bool) -> _Loaded:
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
    return _Loaded(key, idx[0], first, specs, cached, skipped)


def _group_source(cfg, item: _Loaded) -> None:
    """Duplicate groups inside the source, and the split groups they imply."""
    d, cached = cfg.duplicates, item.cached
    item.dup = duplicate_groups(cached.pixel_hash, cached.phash, exact=d.exact, near=d.near,
                                max_distance=d.max_distance, thumbs=cached.thumbs,
                                min_correlation=d.min_correlation)
    reader_groups = np.array([r.group for r in cached.records], dtype=object)
    if splitting.SPLITTERS.meta(item.tcfg.split.method).official:
        official = np.array([r.split for r in cached.records], dtype=object)
        splitting.check_groups([r.id for r in cached.records], reader_groups, official,
                               f"{item.tcfg.name} (official split)")
        item.groups = reader_groups
    else:
        item.groups = merge_groups(reader_groups, item.dup) if d.policy == "group" else reader_groups
    item.groups = np.asarray(item.groups, dtype=object)


def _link_copies(cfg, loaded: list[_Loaded]) -> None:
    """Merge groups across sources that medmtl splits itself and that share copies of an image.

    Sources with an official split keep it (the leakage guard then keeps their copies out of
    training); sources split by holdout/kfold get one group per set of copies across datasets,
    named ``COPIES_PREFIX`` + the first member's ``task/group``. ``_build_source`` then splits
    them in config order, each later source taking the split an earlier one gave to a shared
    group. We pin rather than split the concatenation jointly because linked datasets may have
    different split settings (fractions, folds, seeds); the first keeps exactly its own split.
    """
    free = [item for item in loaded if not splitting.SPLITTERS.meta(item.tcfg.split.method).official]
    if cfg.leakage.policy == "off" or len(free) < 2:
        return
    sigs = {item.key: Signatures.of(item.cached) for item in free}
    node_of, node_name, node_source, offset = {}, [], [], 0
    for k, item in enumerate(free):
        uniq, inverse = np.unique(item.groups.astype(str), return_inverse=True)
        node_of[item.key] = offset + inverse.reshape(-1)
        node_name += [f"{item.tcfg.name}/{g}" for g in uniq]
        node_source += [k] * len(uniq)
        offset += len(uniq)
    edges, linked = [], set()
    for x, y in itertools.combinations(free, 2):
        pairs = find_copies(sigs[x.key], sigs[y.key], cfg.leakage, cfg.cache_dir)
        if len(pairs):
            edges.append(np.stack([node_of[x.key][pairs[:, 0]], node_of[y.key][pairs[:, 1]]], axis=1))
            linked |= {(x.key, y.tcfg.name), (y.key, x.tcfg.name)}
    if not edges:
        return
    edges = np.concatenate(edges)
    graph = coo_matrix((np.ones(len(edges), np.int32), (edges[:, 0], edges[:, 1])), shape=(offset, offset))
    _, comp = connected_components(graph, directed=False)
    comp_source = np.unique(np.stack([comp, np.asarray(node_source)], axis=1), axis=0)[:, 0]
    crossing = np.bincount(comp_source, minlength=comp.max() + 1)[comp] > 1   # per node
    _, first = np.unique(comp, return_index=True)                               # smallest node per component
    label = np.char.add(COPIES_PREFIX, np.asarray(node_name, dtype=str)[first[comp]]).astype(object)
    for item in free:
        nodes = node_of[item.key]
        item.groups = np.where(crossing[nodes], label[nodes], item.groups).astype(object)
        item.partners = tuple(sorted(t for k, t in linked if k == item.key))


def _build_source(cfg, item: _Loaded, assigned: dict[str, str], write_splits: bool) -> SourceData:
    tcfg, cached, specs, groups = item.tcfg, item.cached, item.specs, item.groups
    records = cached.records
    ids = [r.id for r in records]
    official = np.array([r.split for r in records], dtype=object)
    # stratify on class labels, never on a continuous value (binarized tasks have no classes yet)
    strat = next((s for s in specs if s.kind in CLASSIFICATION_KINDS and s.binarize is None), None)
    y = np.array([str(r.labels.get(strat.target, "?")) if strat else "?" for r in records])
    where = f"tasks[{item.index}]"

    def compute():
        split = assign_splits(ids, y, groups, official, tcfg.split, where)
        pinned = np.array([assigned.get(g) for g in groups], dtype=object)
        fixed = pinned != None  # noqa: E711 - elementwise on an object array
        split[fixed] = pinned[fixed]
        return split

    split_file = None
    if write_splits:
        name = f"{tcfg.name}-{item.key}-{_split_key(tcfg.split)}{_link_tag(cfg, item)}.csv"
        split_file = Path(cfg.run_dir) / "splits" / name
        split = _load_or_write_split(split_file, ids, list(groups), compute)
    else:
        split = compute()
    notes = []
    if "val" not in set(split):
        # Model selection needs validation data and must never look at the test set: without a
        # validation split, an inner 15 % of the training groups becomes one, and the report says so.
        split = splitting.carve(y, groups, split, INNER_VAL_FRACTION, tcfg.split.seed + 7)
        notes.append(f"no validation split: an inner {INNER_VAL_FRACTION:.0%} of train (by group) is used "
                     "for model selection")
        log.warning("%s: %s", tcfg.name, notes[-1])
    splitting.check_groups(ids, groups, split, f"{tcfg.name} split")
    for g, s in zip(groups, split):
        if str(g).startswith(COPIES_PREFIX):
            assigned.setdefault(g, s)
    exact = duplicate_groups(cached.pixel_hash, cached.phash, exact=True, near=False)
    crossing = _cross_split_duplicates(item.dup, split)
    if crossing:
        log.warning("%s: %d duplicate images sit in a different split from a copy of themselves", tcfg.name, crossing)
    return SourceData(item.key, [s.name for s in specs], cached, np.asarray(groups, dtype=object),
                      np.asarray(split, dtype=object), item.dup, count_groups(exact), count_groups(item.dup), crossing,
                      item.skipped, split_file, notes)


def _link_tag(cfg, item: _Loaded) -> str:
    """File-name suffix of a split tied to other datasets' copies (empty when there are none).

    Such a split depends on the merged groups and on the partners' split settings; a file from
    a run with other partners would otherwise be reused and break the copies-in-one-split rule.
    """
    if not item.partners:
        return ""
    partners = [(t.name, _split_key(t.split)) for t in cfg.tasks if t.name in item.partners]
    text = json.dumps([sorted(map(str, set(item.groups))), partners])
    return f"-linked{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _cross_split_duplicates(dup: np.ndarray, split: np.ndarray) -> int:
    """Images whose duplicate group spans more than one split (only possible with official splits)."""
    spans: dict = {}
    for g, s in zip(dup, split):
        spans.setdefault(g, set()).add(s)
    crossing = {g for g, ss in spans.items() if len(ss) > 1}
    return int(sum(1 for g in dup if g in crossing))
