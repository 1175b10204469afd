"""Pooled features of a frozen trunk, computed once per (trunk weights, images, views) and reused.

A linear-SVM transfer (``feature_extraction``, the LOTO arms) needs the same trunk's features many
times: once per C of its grid, once per training seed when the trunk is an ImageNet one (the seed
changes nothing in a pretrained trunk), and once more in LOTO when the chosen trial's trunk is
transferred after the trial scored it on validation. :func:`trunk_features` memoises them on the
experiment's :class:`~medmtl.data.pipeline.PreparedData`, keyed by a digest of everything that sets
the numbers (the trunk's weights and buffers, the dataset's rows, its transform, size and channels,
the views), so a second request is a lookup and a changed input is never served stale. No library
memoises model outputs by weight content, hence this module.
"""
from __future__ import annotations

import hashlib
import logging
import weakref
from collections import OrderedDict

import numpy as np
import torch

from medmtl.data.dataset import collate
from medmtl.evaluation.predictions import dihedral

log = logging.getLogger("medmtl.evaluation")

# Bytes of features kept per experiment before the least recently used entry is dropped: far above
# one study's needs on a CPU (PCam's 262k training images at 256 features are 270 MB).
MEMO_BYTES = 2 << 30


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of every parameter and buffer of ``module`` (names, shapes, dtypes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def dataset_digest(dataset) -> str:
    """A digest of what a :class:`~medmtl.data.dataset.MultiTaskDataset` yields: rows, tasks, transform."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(dataset.items_).tobytes())
    h.update(repr((dataset.split, dataset.tasks, dataset.source_keys_, dataset.out_size_, dataset.in_chans,
                   dataset.train, repr(dataset.transform_))).encode())
    return h.hexdigest()


class FeatureMemo:
    """Features by key, least recently used dropped first once they pass ``max_bytes``."""

    def __init__(self, max_bytes: int = MEMO_BYTES):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key):
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        return None

    def put(self, key, value) -> None:
        self.entries[key] = value
        while len(self.entries) > 1 and sum(a.nbytes + b.nbytes for a, b in self.entries.values()) > self.max_bytes:
            self.entries.popitem(last=False)


# id(prepared data) -> its memo; kept beside the data rather than on it, so that shipping the data to a
# grid worker does not ship the features too, and dropped with the data
_MEMOS: dict[int, FeatureMemo] = {}


def memo_of(data) -> FeatureMemo:
    """The experiment's feature memo (one per prepared data: a new experiment starts empty)."""
    key = id(data)
    if key not in _MEMOS:
        _MEMOS[key] = FeatureMemo()
        weakref.finalize(data, _MEMOS.pop, key, None)
    return _MEMOS[key]


def compute_features(trunk, dataset, views: int = 1, batch_size: int = 128):
    """(features (views, N, D), labels (N,)) of ``dataset``'s first task: ``views`` 8 is the dihedral
    group of each image (test-time augmentation), 1 the image itself."""
    xs, ys = [], []
    task = dataset.tasks[0]
    device = next(trunk.parameters()).device
    was_training = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
                x = batch["image"].to(device)
                xs.append(np.stack([trunk(v).float().cpu().numpy() for v in (dihedral(x) if views > 1 else [x])]))
                ys.append(batch["labels"][task].numpy())
    finally:
        trunk.train(was_training)
    return np.concatenate(xs, axis=1), np.concatenate(ys)


def trunk_features(trunk, dataset, views: int = 1, memo: FeatureMemo | None = None, weights: str | None = None):
    """:func:`compute_features`, looked up in ``memo`` first (default: the dataset's experiment memo).
    ``weights``: the trunk's :func:`weights_digest`, when the caller asks for several datasets of
    one trunk (hashing a large trunk's weights once, not per split)."""
    memo = memo_of(dataset.data) if memo is None else memo
    key = (weights or weights_digest(trunk), dataset_digest(dataset), int(views))
    found = memo.get(key)
    if found is not None:
        log.debug("features of %s (%s, %d images) reused", dataset.tasks[0], dataset.split, len(dataset))
        return found
    value = compute_features(trunk, dataset, views)
    for a in value:
        a.setflags(write=False)     # shared by every later request: nobody may change them in place
    memo.put(key, value)
    return value
