"""Cross-dataset copies: the same image filed in two datasets must never cross from test to training.

Public medical datasets reuse each other's images: every BreastMNIST image is a BUSI image,
centre-cropped, grey and resized to 28 px. A run that trains on one and evaluates on the other
(or pools them) would train on its own test images. This module finds such copies between
*sources* (distinct record tables; tasks sharing one, like busi_cls/busi_seg/busi_det, hold the
same images, not copies) and applies the ``leakage`` policy of the experiment.

Two images are copies when their grey, centre-cropped ``T`` px thumbnails (``T = 32`` by default,
made once by the decode cache) pass two correlation tests:

1. **layout**: the z-normalised thumbnails averaged over 2x2 blocks (16 px) correlate at least
   ``min_correlation`` (0.9);
2. **detail**: their band-pass detail (difference of Gaussians, sigma 1 and 3 px at ``T`` px)
   correlates at least ``min_detail_correlation`` (0.8).

Why two tests, and not one correlation at 32 px (evidence from the shared datasets, best match
per image, and from 450 BUSI/brain/skin images copied with resizing to 20-64 px, centre
cropping, JPEG quality 30, +30 brightness, x1.3 contrast, gamma 0.7 and noise):

* plain correlation at 32 px neither finds all copies nor rejects strangers: synthetic 28 px
  copies fall to 0.857 (a 28 px image is blown up to 32 px in blocks), BreastMNIST->BUSI has a
  minimum of 0.908, while the unrelated skin->PCam pair reaches 0.922 and RetinaMNIST->skin 0.879
  (both a dark vignette in one corner: smooth layouts correlate by chance);
* layout at 16 px: copies >= 0.942 (synthetic) and >= 0.964 (BreastMNIST), but strangers reach
  0.944, so layout alone cannot decide either;
* detail: copies >= 0.900 (synthetic) and >= 0.946 (BreastMNIST); of the 436 unrelated pairs over
  all 28 pairs of shared sources that pass the layout test, the highest detail correlation is
  0.666 (0.805 over all pairs). Both tests together separate copies from strangers with margin,
  and all 780 BreastMNIST images match a BUSI image, with no match between unrelated datasets.

Limits: at 32 px, different images of one modality with a fixed layout can pass both tests.
Inside mini-MIAS, 4496 pairs of distinct mammograms pass (the breast outline dominates the
thumbnail), inside RetinaMNIST 11 % of all pairs (a 28 px orange disc); inside BUSI, skin and
PCam only real near-duplicates do. Two such datasets of one modality would have images removed
from training that are not copies (the guard errs towards excluding); a larger ``thumbnail`` or
a higher ``min_detail_correlation`` makes it stricter.

The search is float32 matrix products in blocks. An 8 px projection of the layout vectors gives
an upper bound on their correlation (the coarse grid's correlation plus the product of what it
leaves out, by Cauchy-Schwarz), so most pairs are rejected on 64 numbers without any loss; only
candidates are checked at full resolution (23,000 x 23,000 images: about 6 s on 2 CPU cores).
The pairs found are cached under the decode cache root (``leakage-t{T}/``), keyed by both
sources' content keys, the thresholds and ``T``: a second run loads them.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.ndimage import gaussian_filter

from medmtl.errors import LeakageError

log = logging.getLogger("medmtl.data")

VERSION = 1                 # bump when the test changes, so cached matches are not reused
FLAT_STD = 1.0              # grey levels
DETAIL_SIGMAS = (1.0, 3.0)  # px at T; 1 px smooths blockiness and JPEG noise, 3 px drops vignetting
BOUND_SLACK = 1e-4          # float32 rounding of the coarse bound must never drop a true candidate
DENSE_FRACTION = 0.05       # above this candidate density one full product is cheaper than gathering
BLOCK_ELEMENTS = 1 << 24    # entries of one block of correlations (64 MB of float32)
EVALUATION = ("val", "test")


# -- signatures ------------------------------------------------------------------------------
def _pool(x: np.ndarray, f: int) -> np.ndarray:
    n, h, w = x.shape
    return x.reshape(n, h // f, f, w // f, f).mean(axis=(2, 4))


def _unit(x: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Rows minus their mean, scaled to unit length (dot product = correlation); unusable rows 0."""
    x = x.reshape(len(x), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.maximum(norm, 1e-12)
    x[~usable] = 0.0  # a zero vector correlates 0 with everything, so it never passes a threshold
    return x


def _band_pass(thumbs: np.ndarray) -> np.ndarray:
    fine, coarse = ((0, s, s) for s in DETAIL_SIGMAS)
    return gaussian_filter(thumbs, fine, mode="nearest") - gaussian_filter(thumbs, coarse, mode="nearest")


@dataclass
class Signatures:
    """One source's images reduced to unit vectors, one row per distinct content key.

    Features are computed on first use, so a run whose matches are all cached never builds them.
    """

    keys: np.ndarray     # (U,) sorted distinct content keys
    rows: np.ndarray     # (N,) index into ``keys`` of each record row
    thumbs: np.ndarray   # (U, T, T) uint8
    digest: str          # identifies the set of keys and the thumbnail size

    @classmethod
    def of(cls, cached) -> Signatures:
        """Signatures of a :class:`~medmtl.data.cache.CachedImages` (its thumbnails and keys)."""
        keys = cached.keys if cached.keys is not None else cached.pixel_hash
        keys = np.asarray(keys, dtype=str)
        uniq, first, rows = np.unique(keys, return_index=True, return_inverse=True)
        thumbs = np.asarray(cached.thumbs)[first]
        size = thumbs.shape[-1] if thumbs.ndim == 3 else 0
        digest = hashlib.sha1(f"t{size}\n".encode() + "\n".join(uniq).encode()).hexdigest()
        return cls(uniq, rows.reshape(-1), thumbs, digest)

    def __len__(self) -> int:
        return len(self.keys)

    @cached_property
    def _grey(self) -> np.ndarray:
        s = (self.thumbs.shape[-1] // 4) * 4 if len(self) else 0
        return self.thumbs[:, :s, :s].astype(np.float32)

    @cached_property
    def usable(self) -> np.ndarray:
        # A (near-)constant thumbnail has no pattern: z-normalising it would blow up quantisation
        # noise into a random one, and every blank frame of every dataset would "match" every other.
        return self._grey.reshape(len(self), -1).std(axis=1) >= FLAT_STD

    @cached_property
    def layout(self) -> np.ndarray:
        return _unit(_pool(self._grey, 2), self.usable)

    @cached_property
    def coarse(self) -> np.ndarray:
        """Projection of ``layout`` on 2x2 blocks, scaled so that dot products carry over."""
        side = self._grey.shape[-1] // 2
        return (2.0 * _pool(self.layout.reshape(-1, side, side), 2)).reshape(len(self), -1)

    @cached_property
    def rest(self) -> np.ndarray:
        """Length of the part of ``layout`` that ``coarse`` does not see."""
        return np.sqrt(np.clip(1.0 - (self.coarse ** 2).sum(axis=1), 0.0, None)).astype(np.float32)

    @cached_property
    def detail(self) -> np.ndarray:
        return _unit(_band_pass(self._grey), self.usable)


# -- matching ----------------------------------------------------------------------------------
def _rowdot(x: np.ndarray, y: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """``x[i[k]] . y[j[k]]`` for every k, gathered in chunks to bound memory."""
    out = np.empty(len(i), np.float32)
    for s in range(0, len(i), chunk):
        out[s:s + chunk] = np.einsum("ij,ij->i", x[i[s:s + chunk]], y[j[s:s + chunk]])
    return out


def _layout_matches(a: Signatures, b: Signatures, rows: slice, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i in ``rows`` of a, j in b) whose layout correlation reaches ``threshold``."""
    bound = a.coarse[rows] @ b.coarse.T
    bound += np.outer(a.rest[rows], b.rest)
    i, j = np.nonzero(bound >= threshold - BOUND_SLACK)
    if len(i) > DENSE_FRACTION * bound.size:
        i, j = np.nonzero(a.layout[rows] @ b.layout.T >= threshold)
        return i + rows.start, j
    i = i + rows.start
    keep = _rowdot(a.layout, b.layout, i, j) >= threshold
    return i[keep], j[keep]


def match_signatures(a: Signatures, b: Signatures, min_correlation: float, min_detail: float) -> np.ndarray:
    """(P, 2) pairs of key indices (into ``a.keys``, ``b.keys``) that are copies of each other."""
    if not len(a) or not len(b):
        return np.zeros((0, 2), np.int64)
    block = max(1, BLOCK_ELEMENTS // len(b))
    found = []
    for start in range(0, len(a), block):
        i, j = _layout_matches(a, b, slice(start, min(start + block, len(a))), min_correlation)
        keep = _rowdot(a.detail, b.detail, i, j) >= min_detail
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found).astype(np.int64)


def _cache_path(cache_dir, first: Signatures, second: Signatures, cfg) -> Path | None:
    if cache_dir is None:
        return None
    size = first.thumbs.shape[-1] if first.thumbs.ndim == 3 else 0
    text = f"v{VERSION}|{first.digest}|{second.digest}|{cfg.min_correlation!r}|{cfg.min_detail_correlation!r}"
    return Path(cache_dir) / f"leakage-t{size}" / f"{hashlib.sha1(text.encode()).hexdigest()}.npy"


def key_pairs(a: Signatures, b: Signatures, cfg, cache_dir=None) -> np.ndarray:
    """Matches between two sources as key-index pairs, loaded from the cache when known.

    The pair is stored once for both orders (the sources sorted by digest), so listing the
    datasets in another order reuses it.
    """
    flip = a.digest > b.digest
    first, second = (b, a) if flip else (a, b)
    path = _cache_path(cache_dir, first, second, cfg)
    if path is not None and path.is_file():
        pairs = np.load(path)
    else:
        pairs = match_signatures(first, second, cfg.min_correlation, cfg.min_detail_correlation)
        if path is not None:
            _save(path, pairs)
    return pairs[:, ::-1] if flip else pairs


def _save(path: Path, pairs: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, pairs.astype(np.int32))
    os.replace(tmp, path)  # readers see the whole file or none


def row_pairs(pairs: np.ndarray, a: Signatures, b: Signatures) -> np.ndarray:
    """Key-index pairs expanded to record rows (a key held by several rows pairs each of them)."""
    def member(sig: Signatures):
        return sparse.csr_matrix((np.ones(len(sig.rows), np.int32), (np.arange(len(sig.rows)), sig.rows)),
                                 shape=(len(sig.rows), len(sig)))

    link = sparse.csr_matrix((np.ones(len(pairs), np.int32), (pairs[:, 0], pairs[:, 1])), shape=(len(a), len(b)))
    hits = (member(a) @ link @ member(b).T).tocoo()
    out = np.stack([hits.row, hits.col], axis=1).astype(np.int64)
    return out[np.lexsort((out[:, 1], out[:, 0]))]


def find_copies(a, b, cfg, cache_dir=None) -> np.ndarray:
    """Row pairs (row of ``a``, row of ``b``) of images that are copies of each other.

    Args:
        a: a :class:`~medmtl.data.cache.CachedImages` or :class:`Signatures` of one source.
        b: the same for the other source.
        cfg: the ``leakage`` settings (``min_correlation``, ``min_detail_correlation``).
        cache_dir: decode cache root where matches are cached; ``None`` computes every time.
    """
    sa = a if isinstance(a, Signatures) else Signatures.of(a)
    sb = b if isinstance(b, Signatures) else Signatures.of(b)
    return row_pairs(key_pairs(sa, sb, cfg, cache_dir), sa, sb)


# -- the policy ----------------------------------------------------------------------------------
def _evaluation_rows(data, task: str) -> np.ndarray:
    """Rows that evaluate ``task``: labelled and in val or test."""
    return data.has_label(task) & np.isin(data.source_of(task).split, EVALUATION)


def _one_direction(data, x: str, y: str, pairs: np.ndarray, report: dict, excluded: np.ndarray,
                   excluded_val: np.ndarray) -> list[dict]:
    """Count copies of source ``x`` in ``y`` per task pair; mark ``x``'s training rows that copy an
    evaluation image of ``y`` and ``x``'s validation rows that copy a test image of ``y`` (model
    selection on them would see the test image)."""
    sx, sy = data.sources[x], data.sources[y]
    a, b = pairs[:, 0], pairs[:, 1]
    train_a, val_a = sx.split[a] == "train", sx.split[a] == "val"
    leaks = []
    for ty in sy.tasks:
        test_b = (data.has_label(ty) & (sy.split == "test"))[b]
        for tx in sx.tasks:
            hit = val_a & test_b & data.has_label(tx)[a]
            selecting = np.unique(a[hit])
            if len(selecting):
                report["excluded_from_validation"][tx][ty] = len(selecting)
                leaks.append({"task": tx, "other": ty, "rows": selecting, "pairs": pairs[hit], "split": "val"})
        excluded_val[a[val_a & test_b]] = True
        eval_b = _evaluation_rows(data, ty)[b]
        for tx in sx.tasks:
            labelled = data.has_label(tx)[a] & data.has_label(ty)[b]
            copies = np.unique(a[labelled])
            if len(copies):
                report["cross_duplicates"][tx][ty] = len(copies)
            hit = train_a & eval_b & data.has_label(tx)[a]
            leaking = np.unique(a[hit])
            if len(leaking):
                report["excluded"][tx][ty] = len(leaking)
                leaks.append({"task": tx, "other": ty, "rows": leaking, "pairs": pairs[hit]})
        excluded[a[train_a & eval_b]] = True
    return leaks


def _describe(data, leak: dict, limit: int = 3) -> str:
    sx, sy = data.source_of(leak["task"]), data.source_of(leak["other"])
    examples = ", ".join(f"{sx.cached.records[i].source.describe()} = {sy.cached.records[j].source.describe()}"
                         for i, j in leak["pairs"][:limit])
    if leak.get("split") == "val":
        return (f"{len(leak['rows'])} validation images of {leak['task']!r} are copies of test images of "
                f"{leak['other']!r} (e.g. {examples})")
    return (f"{len(leak['rows'])} training images of {leak['task']!r} are copies of validation/test images of "
            f"{leak['other']!r} (e.g. {examples})")


def _log(data, report: dict, policy: str) -> None:
    for task, others in report["cross_duplicates"].items():
        for other, n in others.items():
            removed = report["excluded"][task].get(other, 0)
            if removed:
                verdict = f"removed from {task} training" if policy == "exclude" else "would enter training"
                log.warning("leakage guard: %d %s images have a copy in %s; %d of them %s (copies of %s "
                            "validation/test images)", n, task, other, removed, verdict, other)
            else:
                log.info("leakage guard: %d %s images have a copy in %s; none crosses from evaluation to training",
                         n, task, other)
            held = report["excluded_from_validation"][task].get(other, 0)
            if held:
                log.warning("leakage guard: %d %s validation images are copies of %s test images; %s", held, task,
                            other, "left out of validation" if policy == "exclude" else "they would select models")


def apply_leakage_guard(data, cfg) -> None:
    """Find copies between the sources of ``data`` and keep evaluation copies out of training.

    For every pair of sources and every matched pair (a, b): if b is a validation or test image
    of an evaluated task (one with validation or test rows) and a is a training image, a leaves
    training for every task of its source (``data.excluded``). Copies that are both training
    images stay. Fills ``data.leakage`` with ``cross_duplicates`` ({task: {other: images of task
    with a copy in other}}), ``excluded`` ({task: {other: training images removed}}) and
    ``pairs`` ({"task|other": (P, 2) row pairs}, per pair of sources, in memory only).

    Args:
        data: the :class:`~medmtl.data.pipeline.PreparedData` of a run; its splits are final.
        cfg: the ``leakage`` settings; ``policy: off`` does nothing.

    Raises:
        LeakageError: ``policy: error`` and some training image copies an evaluation image.
    """
    if cfg.policy == "off":
        return
    cache_dir = getattr(data, "cache_dir", None)
    sigs = {k: Signatures.of(s.cached) for k, s in data.sources.items()}
    report = {"cross_duplicates": {t: {} for t in data.tasks}, "excluded": {t: {} for t in data.tasks},
              "excluded_from_validation": {t: {} for t in data.tasks}, "pairs": {}}
    excluded = {k: np.zeros(len(s), bool) for k, s in data.sources.items()}
    excluded_val = {k: np.zeros(len(s), bool) for k, s in data.sources.items()}
    leaks = []
    for x, y in itertools.combinations(data.sources, 2):
        pairs = row_pairs(key_pairs(sigs[x], sigs[y], cfg, cache_dir), sigs[x], sigs[y])
        report["pairs"][f"{data.sources[x].tasks[0]}|{data.sources[y].tasks[0]}"] = pairs
        leaks += _one_direction(data, x, y, pairs, report, excluded[x], excluded_val[x])
        leaks += _one_direction(data, y, x, pairs[:, ::-1], report, excluded[y], excluded_val[y])
    _log(data, report, cfg.policy)
    if leaks and cfg.policy == "error":
        raise LeakageError("leakage: " + "; ".join(_describe(data, leak) for leak in leaks)
                           + ". Set leakage.policy: exclude to drop them from training, or split the datasets "
                             "together (holdout/kfold on both)")
    for key, src in data.sources.items():
        for task in src.tasks:
            data.excluded[task] = excluded[key].copy()
            data.excluded_val[task] = excluded_val[key].copy()
    data.leakage = report
