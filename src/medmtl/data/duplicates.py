"""Exact and near duplicates inside one dataset, found on the decode cache's signatures.

Exact: equal hashes of the decoded pixels. Near: 64-bit perceptual hashes (imagehash's pHash)
differing in at most ``max_distance`` bits. Pairs are joined into groups with union-find; the
Hamming distances are computed in vectorised blocks, never in a Python loop over pairs.
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


def near_pairs(hashes: np.ndarray, max_distance: int, block: int = 2048) -> np.ndarray:
    """All pairs (i < j) whose 64-bit hashes differ in at most ``max_distance`` bits, shape (P, 2)."""
    h = np.asarray(hashes, dtype=np.uint64)
    found = []
    for start in range(0, len(h), block):
        rows = h[start:start + block]
        dist = popcount64(rows[:, None] ^ h[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def exact_pairs(pixel_hash: np.ndarray) -> np.ndarray:
    first: dict[str, int] = {}
    pairs = []
    for i, key in enumerate(pixel_hash):
        if key in first:
            pairs.append((first[key], i))
        else:
            first[key] = i
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def duplicate_groups(pixel_hash: np.ndarray, phash: np.ndarray, *, exact: bool = True,
                     near: bool = True, max_distance: int = 4) -> np.ndarray:
    """Group label per image (the smallest index of its group); singletons label themselves."""
    uf = UnionFind(len(pixel_hash))
    pairs = [exact_pairs(pixel_hash)] if exact else []
    if near:
        pairs.append(near_pairs(phash, max_distance))
    for a, b in (np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)):
        uf.union(int(a), int(b))
    return uf.labels()


def count_groups(labels: np.ndarray) -> int:
    """Number of duplicate groups, i.e. groups holding two or more images."""
    _, counts = np.unique(labels, return_counts=True)
    return int((counts > 1).sum())
