"""Decode once: the cache's contract, and the split rules (stratified, grouped, seeded, reused)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from medmtl.data import splits
from medmtl.data.cache import DecodeCache
from medmtl.data.readers import READERS
from medmtl.errors import DataError
from tests.conftest import need_data


@pytest.fixture
def brain_copy(tmp_path):
    src = need_data("brain_tumor_mri")
    for cls in ("yes", "no"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for p in sorted((src / cls).iterdir())[:6]:
            shutil.copy(p, tmp_path / "data" / cls / p.name)
    return tmp_path / "data"


def test_second_pass_opens_no_image_file(brain_copy, tmp_path, monkeypatch):
    records = READERS.get("folder")(root=brain_copy).read().records
    cache = DecodeCache(tmp_path / "cache", 64, "L")
    first = cache.load(records, progress=False)
    assert first.decoded == 12 and first.image(0).shape == (64, 64, 1)

    def refuse(*a, **k):
        raise AssertionError("an image file was decoded on a warm cache")

    monkeypatch.setattr(Image, "open", refuse)
    second = cache.load(records, progress=False)
    assert second.decoded == 0
    np.testing.assert_array_equal(first.images(), second.images())
    assert isinstance(second.store, np.memmap)


def test_changed_source_file_invalidates_its_entry(brain_copy, tmp_path):
    reader = READERS.get("folder")(root=brain_copy)
    cache = DecodeCache(tmp_path / "cache", 32, "L")
    before = cache.load(reader.read().records, progress=False)
    victim = before.records[0].source.path
    img = np.asarray(Image.open(victim).convert("L"))
    Image.fromarray(255 - img).save(victim.with_suffix(".png") if victim.suffix.lower() == ".png" else victim)
    after = cache.load(reader.read().records, progress=False)
    assert after.decoded == 1                        # only the changed file is decoded again
    i = [r.id for r in after.records].index(before.records[0].id)
    assert not np.array_equal(after.image(i), before.image(0))
    np.testing.assert_array_equal(after.image(1), before.image(1))


def test_settings_are_part_of_the_key(brain_copy, tmp_path):
    records = READERS.get("folder")(root=brain_copy).read().records
    a = DecodeCache(tmp_path / "cache", 32, "L").load(records, progress=False)
    b = DecodeCache(tmp_path / "cache", 48, "RGB").load(records, progress=False)
    assert a.image(0).shape == (32, 32, 1) and b.image(0).shape == (48, 48, 3) and b.decoded == 12


def test_killed_append_leaves_cache_usable(brain_copy, tmp_path):
    records = READERS.get("folder")(root=brain_copy).read().records
    cache = DecodeCache(tmp_path / "cache", 32, "L")
    ok = cache.load(records[:6], progress=False)
    with open(cache.dir / "images.u8", "ab") as fh:   # bytes a killed run wrote past the index
        fh.write(b"\x07" * 1000)
    more = cache.load(records, progress=False)
    assert more.decoded == 6
    np.testing.assert_array_equal(more.images(np.arange(6)), ok.images())


def _toy(n_groups=60, per_group=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group).astype(str)
    y = np.repeat(rng.integers(0, 2, n_groups), per_group)
    return y, groups


def test_holdout_is_grouped_stratified_and_seeded():
    y, groups = _toy()
    s = splits.holdout(y, groups, (0.7, 0.15, 0.15), seed=1)
    for g in np.unique(groups):
        assert len(set(s[groups == g])) == 1
    frac = {k: np.mean(s == k) for k in ("train", "val", "test")}
    assert abs(frac["train"] - 0.7) < 0.06 and abs(frac["test"] - 0.15) < 0.06
    for k in ("train", "test"):
        assert abs(y[s == k].mean() - y.mean()) < 0.15       # class balance kept
    assert (splits.holdout(y, groups, (0.7, 0.15, 0.15), seed=1) == s).all()
    assert (splits.holdout(y, groups, (0.7, 0.15, 0.15), seed=2) != s).any()


def test_kfold_folds_partition_the_data():
    y, groups = _toy()
    tests = [splits.kfold(y, groups, 4, k, 0.0, seed=0) == "test" for k in range(4)]
    assert (np.sum(tests, axis=0) == 1).all()


def test_group_in_two_splits_is_an_error():
    with pytest.raises(DataError, match="group 'p1' is in two splits"):
        splits.check_groups(["a", "b"], ["p1", "p1"], ["train", "test"], "toy")


def test_split_file_is_written_and_reused(datasets_config, shared_data):
    src = shared_data.source_of("brain_tumor")
    assert src.split_file.is_file()
    import pandas as pd

    table = pd.read_csv(src.split_file, dtype=str, keep_default_na=False)
    assert dict(zip(table["id"], table["split"])) == dict(zip(src.ids, src.split))
    # a hand-edited split file is what the next run uses (it is reused, not recomputed)
    moved = table["group"] == table["group"].iloc[0]
    table.loc[moved, "split"] = "test" if table["split"].iloc[0] != "test" else "train"
    table.to_csv(src.split_file, index=False)
    from medmtl.data.pipeline import prepare

    cfg = datasets_config.model_copy(update={"tasks": [datasets_config.task("brain_tumor")]})
    again = prepare(cfg, progress=False).source_of("brain_tumor")
    assert dict(zip(again.ids, again.split)) == dict(zip(table["id"], table["split"]))


def test_official_split_without_val_gets_an_inner_validation_split(tmp_path):
    from medmtl.config import parse_config
    from medmtl.data.inspect import inspect
    from medmtl.data.pipeline import prepare

    src = need_data("brain_tumor_mri")
    for split in ("train", "test"):
        for cls in ("yes", "no"):
            (tmp_path / "d" / split / cls).mkdir(parents=True)
    for cls in ("yes", "no"):
        files = sorted((src / cls).iterdir())[:30]
        for i, p in enumerate(files):
            shutil.copy(p, tmp_path / "d" / ("test" if i % 5 == 0 else "train") / cls / p.name)
    cfg = parse_config({"name": "inner", "cache_dir": str(tmp_path / "c"), "run_dir": str(tmp_path / "r"),
                        "tasks": [{"name": "t", "kind": "binary", "classes": ["no", "yes"], "target": "class",
                                   "reader": {"name": "folder", "root": str(tmp_path / "d")},
                                   "image": {"size": 32, "mode": "L"}, "split": {"method": "official"}}]})
    data = prepare(cfg, progress=False)
    s = data.source_of("t")
    official = {r.id: r.split for r in s.cached.records}
    assert set(s.split) == {"train", "val", "test"}
    assert all(official[i] == "test" for i, sp in zip(s.ids, s.split) if sp == "test")   # test untouched
    assert all(official[i] == "train" for i, sp in zip(s.ids, s.split) if sp == "val")   # val from train
    assert "inner 15% of train" in inspect(data)["tasks"]["t"]["notes"][0]
