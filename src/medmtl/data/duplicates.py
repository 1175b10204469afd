"""Exact and near duplicates inside one dataset, found on the decode cache's signatures.

Exact: equal hashes of the decoded pixels. Near: 64-bit perceptual hashes (imagehash's pHash)
differing in at most ``max_distance`` bits, confirmed by a normalised correlation of the grey
thumbnails of at least ``min_correlation``. The hash alone is not enough: on the shared data,
different mini-MIAS films (dark background, one bright breast) and RetinaMNIST fundi are 2-4 bits
apart with thumbnail correlations of 0.90-0.98, while true re-saved or rescaled copies (brain MRI,
BUSI) correlate above 0.99. Pairs are joined into groups with union-find; the Hamming distances
are computed in vectorised blocks, never in a Python loop over pairs.
"""
from __future__ import annotations

import numpy as np


class UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression keeps later finds O(1)
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))])


def popcount64(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def near_pairs_bruteforce(hashes: np.ndarray, max_distance: int, block: int = 2048) -> np.ndarray:
    """All pairs (i < j) within ``max_distance`` bits by blockwise all-pairs XOR (reference)."""
    h = np.asarray(hashes, dtype=np.uint64)
    found = [np.zeros((0, 2), np.int64)]
    for start in range(0, len(h), block):
        dist = popcount64(h[start:start + block, None] ^ h[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found)


def _chunks(max_distance: int) -> list[tuple[int, int]]:
    k = max_distance + 1
    widths = [64 // k + (1 if c < 64 % k else 0) for c in range(k)]
    starts = np.cumsum([0, *widths[:-1]])
    return list(zip(starts.tolist(), widths))


def _same_key_pairs(key: np.ndarray) -> np.ndarray:
    """Pairs of positions whose ``key`` values are equal, generated run by run after a sort."""
    order = np.argsort(key, kind="stable")
    sk = key[order]
    run = np.cumsum(np.r_[True, sk[1:] != sk[:-1]])
    longest = int(np.max(np.bincount(run))) if len(run) else 0
    found = [np.zeros((0, 2), np.int64)]
    for offset in range(1, longest):
        i = np.flatnonzero(run[:-offset] == run[offset:])
        found.append(np.stack([order[i], order[i + offset]], axis=1))
    return np.concatenate(found)


def near_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs (i < j) whose 64-bit hashes differ in at most ``max_distance`` bits, shape (P, 2).

    Multi-index hashing: cut the hash into ``max_distance + 1`` bit chunks; by the pigeonhole
    principle two hashes that close agree exactly on at least one chunk. Candidates come from
    sorting on each chunk, and are then verified, so the cost grows with the number of images and
    true matches rather than with all pairs (tens of thousands of images take well under a second).
    """
    h = np.asarray(hashes, dtype=np.uint64)
    if len(h) < 2:
        return np.zeros((0, 2), np.int64)
    cands = []
    for lo, width in _chunks(max_distance):
        key = (h >> np.uint64(lo)) & np.uint64((1 << width) - 1)
        cands.append(_same_key_pairs(key))
    pairs = np.sort(np.concatenate(cands), axis=1)
    pairs = pairs[popcount64(h[pairs[:, 0]] ^ h[pairs[:, 1]]) <= max_distance]
    # a close pair shares several chunks and was found several times: keep one copy (sort-based
    # unique on the verified, few pairs)
    flat = np.sort(pairs[:, 0] * len(h) + pairs[:, 1])
    flat = flat[np.r_[True, flat[1:] != flat[:-1]]] if len(flat) else flat
    return np.stack([flat // len(h), flat % len(h)], axis=1).astype(np.int64)


def exact_pairs(pixel_hash: np.ndarray) -> np.ndarray:
    first: dict[str, int] = {}
    pairs = []
    for i, key in enumerate(pixel_hash):
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def zscore_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """Flattened thumbnails with zero mean and unit norm, so a dot product is a correlation.

    A flat thumbnail (blank image) has no pattern to compare and gets a zero vector: it matches
    nothing, rather than everything.
    """
    t = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    t -= t.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(t, axis=1, keepdims=True)
    return np.divide(t, norm, out=np.zeros_like(t), where=norm > 1e-3 * np.sqrt(t.shape[1]))


def confirm_pairs(pairs: np.ndarray, thumbs: np.ndarray, min_correlation: float) -> np.ndarray:
    """Keep the pairs whose thumbnails correlate at least ``min_correlation``."""
    if len(pairs) == 0:
        return pairs
    z = zscore_thumbs(thumbs)
    corr = np.einsum("ij,ij->i", z[pairs[:, 0]], z[pairs[:, 1]])
    return pairs[corr >= min_correlation]


def duplicate_groups(pixel_hash: np.ndarray, phash: np.ndarray, *, exact: bool = True,
                     near: bool = True, max_distance: int = 4, thumbs: np.ndarray | None = None,
                     min_correlation: float = 0.99) -> np.ndarray:
    """Group label per image (the smallest index of its group); singletons label themselves.

    Near pairs are confirmed on ``thumbs`` when given (see the module docstring for why).
    """
    uf = UnionFind(len(pixel_hash))
    pairs = [exact_pairs(pixel_hash)] if exact else []
    if near:
        cand = near_pairs(phash, max_distance)
        pairs.append(cand if thumbs is None else confirm_pairs(cand, thumbs, min_correlation))
    for a, b in (np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)):
        uf.union(int(a), int(b))
    return uf.labels()


def count_groups(labels: np.ndarray) -> int:
    """Number of duplicate groups, i.e. groups holding two or more images."""
    _, counts = np.unique(labels, return_counts=True)
    return int((counts > 1).sum())
