"""Duplicate search: the indexed near-pair search equals brute force; grouping rules."""
from __future__ import annotations

import numpy as np
import pytest

from medmtl.data.duplicates import count_groups, duplicate_groups, near_pairs, near_pairs_bruteforce, zscore_thumbs


@pytest.mark.parametrize("max_distance", [0, 1, 3, 4, 7])
def test_indexed_near_pairs_equal_bruteforce(max_distance):
    rng = np.random.default_rng(max_distance)
    base = rng.integers(0, 2**63, 3000, dtype=np.int64).astype(np.uint64)
    bits = np.uint64(1) << rng.integers(0, 64, (400, 3)).astype(np.uint64)
    noisy = base[:400] ^ bits[:, 0] ^ bits[:, 1] ^ bits[:, 2]      # 1-3 bits away
    h = np.concatenate([base, noisy, np.zeros(20, np.uint64)])    # plus a block of equal hashes
    got = {tuple(p) for p in near_pairs(h, max_distance)}
    assert got == {tuple(p) for p in near_pairs_bruteforce(h, max_distance)}
    assert len(got) >= 190                                         # the 20 equal hashes at least


def test_exact_duplicates_group_and_near_need_thumbnail_agreement():
    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 256, (5, 8, 8)).astype(np.uint8)
    thumbs[1] = thumbs[0]                                  # an exact copy
    thumbs[3] = np.clip(thumbs[2].astype(int) + 3, 0, 255)  # a brightened copy
    pixel_hash = np.array(["a", "a", "b", "c", "d"], dtype=object)
    phash = np.array([1, 1, 8, 9, 9], dtype=np.uint64)       # 3 and 4 are one bit from 2
    g = duplicate_groups(pixel_hash, phash, max_distance=2, thumbs=thumbs, min_correlation=0.99)
    assert g[0] == g[1] and g[2] == g[3] and g[4] != g[2]   # 4's hash is close but its pixels are not
    assert count_groups(g) == 2
    exact_only = duplicate_groups(pixel_hash, phash, near=False)
    assert count_groups(exact_only) == 1


def test_flat_thumbnails_match_nothing():
    z = zscore_thumbs(np.full((2, 4, 4), 7, np.uint8))
    assert np.all(z == 0)
