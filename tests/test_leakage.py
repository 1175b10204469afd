"""Cross-dataset leakage guard: copies of one image in two datasets never cross from test to training.

On the real data every BreastMNIST image is a BUSI image; synthetic folder datasets made in
tmp_path check robustness (resized, centre-cropped, re-encoded, brightness-shifted copies), the
joint split of two datasets medmtl splits itself, and that matches are cached.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from medmtl.config.loader import parse_config
from medmtl.data import leakage
from medmtl.data.inspect import format_text, inspect
from medmtl.data.pipeline import prepare
from medmtl.errors import LeakageError
from tests.conftest import need_data

HOLDOUT = {"method": "holdout", "fractions": [0.7, 0.15, 0.15], "seed": 0}
EVALUATION = ("val", "test")


# -- configs ---------------------------------------------------------------------------------
def real_tasks() -> dict[str, dict]:
    """The shared datasets as declared in experiments/datasets.yaml (same sizes: one decode cache)."""
    busi = {"kind": "multiclass", "classes": ["benign", "malignant", "normal"], "target": "class",
            "group_key": "image", "reader": {"name": "busi", "root": str(need_data("busi"))},
            "image": {"size": 128, "mode": "L"}, "split": HOLDOUT}
    return {
        "busi_cls": {"name": "busi_cls", **busi},
        "busi_seg": {"name": "busi_seg", **busi, "kind": "segmentation", "classes": None, "target": "mask"},
        "busi_det": {"name": "busi_det", **busi, "kind": "detection", "classes": None, "target": "box"},
        "breastmnist": {"name": "breastmnist", "kind": "binary", "classes": ["malignant", "normal_or_benign"],
                        "target": "label", "image": {"size": 28, "mode": "L"}, "split": {"method": "official"},
                        "reader": {"name": "medmnist", "path": str(need_data("medmnist", "breastmnist.npz"))}},
        "skin": {"name": "skin", "kind": "binary", "classes": ["benign", "malignant"], "target": "class",
                 "reader": {"name": "folder", "root": str(need_data("skin_cancer_isic"))},
                 "image": {"size": 128, "mode": "RGB"}, "split": {"method": "official", "val_fraction": 0.15}},
        "brain_tumor": {"name": "brain_tumor", "kind": "binary", "classes": ["no", "yes"], "target": "class",
                        "reader": {"name": "folder", "root": str(need_data("brain_tumor_mri"))},
                        "image": {"size": 128, "mode": "L"}, "split": HOLDOUT},
        "retinamnist": {"name": "retinamnist", "kind": "ordinal", "classes": ["0", "1", "2", "3", "4"],
                        "target": "label", "image": {"size": 28, "mode": "RGB"}, "split": {"method": "official"},
                        "reader": {"name": "medmnist", "path": str(need_data("medmnist", "retinamnist.npz"))}},
    }


def config(cache: Path, run: Path, tasks: list[dict], policy: str = "exclude"):
    return parse_config({"name": "leakage", "cache_dir": str(cache), "run_dir": str(run), "tasks": tasks,
                         "leakage": {"policy": policy}}, "test")


BUSI_AND_BREASTMNIST = ["busi_cls", "busi_seg", "busi_det", "breastmnist"]
UNRELATED = ["skin", "brain_tumor", "retinamnist"]


@pytest.fixture(scope="module")
def real(shared_cache, tmp_path_factory):
    """BUSI (holdout, three tasks), BreastMNIST (official) and three unrelated datasets in one run."""
    tasks = real_tasks()
    cfg = config(shared_cache, tmp_path_factory.mktemp("run"), [tasks[n] for n in BUSI_AND_BREASTMNIST + UNRELATED])
    return cfg, prepare(cfg, progress=False)


def evaluation_copies(data, task: str, other: str, cfg) -> set[int]:
    """Training rows of ``task`` with a copy among ``other``'s validation/test images, found afresh."""
    a, b = data.source_of(task), data.source_of(other)
    pairs = leakage.find_copies(a.cached, b.cached, cfg.leakage)  # no cache_dir: recomputed here
    train = a.split[pairs[:, 0]] == "train"
    evaluated = np.isin(b.split[pairs[:, 1]], EVALUATION) & data.has_label(other)[pairs[:, 1]]
    rows = pairs[train & evaluated, 0]
    return set(rows[data.has_label(task)[rows]].tolist())


def labelled_train(data, task: str) -> set[int]:
    return set(np.flatnonzero(data.has_label(task) & (data.source_of(task).split == "train")).tolist())


# -- the shared datasets -------------------------------------------------------------------------
def test_breastmnist_images_are_busi_copies_and_unrelated_datasets_share_none(real):
    _, data = real
    report = inspect(data)["tasks"]
    assert report["breastmnist"]["cross_duplicates"]["busi_cls"] >= 770
    assert report["busi_cls"]["cross_duplicates"]["breastmnist"] >= 770
    assert set(report["breastmnist"]["cross_duplicates"]) == {"busi_cls", "busi_seg", "busi_det"}
    for name in ("busi_cls", "busi_seg", "busi_det"):
        assert set(report[name]["cross_duplicates"]) == {"breastmnist"}
    for name in UNRELATED:
        assert report[name]["cross_duplicates"] == {} and report[name]["excluded_from_training"] == {}


def test_breastmnist_training_copies_of_busi_evaluation_images_are_excluded(real):
    cfg, data = real
    expected = evaluation_copies(data, "breastmnist", "busi_cls", cfg)
    assert len(expected) > 50
    kept = set(data.rows("breastmnist", "train").tolist())
    assert labelled_train(data, "breastmnist") - kept == expected
    for other in ("busi_cls", "busi_seg", "busi_det"):
        assert data.leakage["excluded"]["breastmnist"][other] == len(evaluation_copies(data, "breastmnist", other, cfg))
    assert data.leakage["excluded"]["breastmnist"]["busi_cls"] == len(expected)


@pytest.mark.parametrize("task", ["busi_cls", "busi_seg", "busi_det"])
def test_busi_training_copies_of_breastmnist_evaluation_images_are_excluded(real, task):
    cfg, data = real
    expected = evaluation_copies(data, task, "breastmnist", cfg)
    assert len(expected) > 50
    assert labelled_train(data, task) - set(data.rows(task, "train").tolist()) == expected
    assert data.leakage["excluded"][task]["breastmnist"] == len(expected)


def test_validation_copies_of_another_datasets_test_images_are_held_out(real):
    """BUSI validation images that are BreastMNIST test images (and the other way round) would select,
    by early stopping, a model later tested on their originals: they leave validation, counted."""
    cfg, data = real
    for task, other in (("busi_cls", "breastmnist"), ("breastmnist", "busi_cls")):
        a, b = data.source_of(task), data.source_of(other)
        pairs = leakage.find_copies(a.cached, b.cached, cfg.leakage)
        hit = (a.split[pairs[:, 0]] == "val") & (b.split[pairs[:, 1]] == "test") & data.has_label(other)[pairs[:, 1]]
        expected = {r for r in pairs[hit, 0].tolist() if data.has_label(task)[r]}
        assert len(expected) > 5
        labelled_val = set(np.flatnonzero(data.has_label(task) & (a.split == "val")).tolist())
        assert labelled_val - set(data.rows(task, "val").tolist()) == expected
        assert data.leakage["excluded_from_validation"][task][other] == len(expected)
        assert inspect(data)["tasks"][task]["removed_from_validation"] == len(expected)
    for name in UNRELATED:
        assert data.leakage["excluded_from_validation"][name] == {}


def test_copies_inside_training_sets_stay(real):
    cfg, data = real
    bm, busi = data.source_of("breastmnist"), data.source_of("busi_cls")
    pairs = leakage.find_copies(bm.cached, busi.cached, cfg.leakage, cfg.cache_dir)
    train_only = {int(a) for a in np.unique(pairs[:, 0])
                  if (busi.split[pairs[pairs[:, 0] == a, 1]] == "train").all() and bm.split[a] == "train"}
    assert len(train_only) > 100
    assert train_only <= set(data.rows("breastmnist", "train").tolist())


def test_text_report_names_the_copies_and_the_removed_images(real):
    _, data = real
    report = inspect(data)
    text = format_text(report)
    bm = report["tasks"]["breastmnist"]
    assert f"copies in busi_cls: {bm['cross_duplicates']['busi_cls']}" in text
    n = data.leakage["excluded"]["breastmnist"]["busi_cls"]
    assert f"removed from training as copies of busi_cls evaluation images: {n}" in text
    # the three BUSI tasks hold the same images: each removed image is counted once in the total
    assert bm["removed_from_training"] == n
    assert f"leakage guard: {n} training images removed in all" in text


def test_policy_error_names_both_tasks_and_examples(real, shared_cache, tmp_path):
    tasks = real_tasks()
    cfg = config(shared_cache, tmp_path, [tasks["busi_cls"], tasks["breastmnist"]], policy="error")
    with pytest.raises(LeakageError, match=r"\d+ training images of 'breastmnist' are copies of validation/test "
                                           r"images of 'busi_cls' \(e\.g\. .*breastmnist\.npz.* = .*busi"):
        prepare(cfg, progress=False)


def test_policy_off_excludes_nothing(real, shared_cache, tmp_path):
    tasks = real_tasks()
    cfg = config(shared_cache, tmp_path, [tasks["busi_cls"], tasks["breastmnist"]], policy="off")
    data = prepare(cfg, progress=False)
    assert data.leakage == {}
    for task in ("busi_cls", "breastmnist"):
        assert set(data.rows(task, "train").tolist()) == labelled_train(data, task)
        assert "cross_duplicates" not in inspect(data)["tasks"][task]


def test_the_guard_logs_one_line_per_task_pair(real, shared_cache, tmp_path, caplog):
    tasks = real_tasks()
    cfg = config(shared_cache, tmp_path, [tasks["busi_cls"], tasks["breastmnist"]])
    with caplog.at_level(logging.WARNING, logger="medmtl.data"):
        data = prepare(cfg, progress=False)
    lines = [r.getMessage() for r in caplog.records if "leakage guard" in r.getMessage()]
    n = data.leakage["excluded"]["breastmnist"]["busi_cls"]
    training = [line for line in lines if "validation images are copies" not in line]
    assert len(training) == 2
    assert any("removed from breastmnist training" in line and f" {n} of them" in line for line in training)
    held = data.leakage["excluded_from_validation"]
    validation = [line for line in lines if "validation images are copies" in line]
    assert len(validation) == sum(1 for t in held for o in held[t] if held[t][o])
    assert any(f"{held['breastmnist']['busi_cls']} breastmnist validation images are copies of busi_cls test "
               "images; left out of validation" in line for line in validation)


# -- synthetic datasets ----------------------------------------------------------------------------
def texture(rng: np.random.Generator, h: int = 96, w: int = 128) -> np.ndarray:
    """A random grey image with structure at several scales (unrelated images correlate ~0)."""
    img = sum(gaussian_filter(rng.normal(size=(h, w)), s) * s for s in (1.0, 3.0, 8.0))
    img = (img - img.min()) / (img.max() - img.min())
    return (40 + 180 * img).astype(np.uint8)


def centre_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    s = min(h, w)
    return img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def resized(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))


def shifted(img: np.ndarray, delta: int) -> np.ndarray:
    return np.clip(img.astype(int) + delta, 0, 255).astype(np.uint8)


COPIES = [  # how dataset B re-publishes some of A's images
    lambda im: resized(centre_square(im), 28, 28),                    # a MedMNIST-style thumbnail
    lambda im: jpeg(im, 40),
    lambda im: shifted(im, 30),
    lambda im: shifted(im, -25),
    lambda im: jpeg(resized(im, 64, 48), 60),
    lambda im: shifted(jpeg(resized(centre_square(im), 48, 48), 50), 20),
    lambda im: resized(im, 256, 192),
    lambda im: np.clip((im.astype(float) - 128) * 1.3 + 128, 0, 255).astype(np.uint8),
]


def write(root: Path, name: str, img: np.ndarray, index: int) -> str:
    cls = "xy"[index % 2]
    (root / cls).mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / cls / name)
    return f"{cls}/{name}"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Folders A (24 images + a blank one) and B (8 copies of A's first images, 16 strangers, a blank)."""
    root = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(7)
    originals = [texture(rng) for _ in range(24)]
    a_ids = [write(root / "a", f"a{i:02d}.png", im, i) for i, im in enumerate(originals)]
    b_ids = [write(root / "b", f"copy{i:02d}.png", make(originals[i]), i // 2) for i, make in enumerate(COPIES)]
    b_ids += [write(root / "b", f"other{i:02d}.png", texture(rng, 80, 80), i) for i in range(16)]
    write(root / "a", "blank.png", np.full((96, 128), 90, np.uint8), 0)
    write(root / "b", "blank.png", np.full((50, 50), 160, np.uint8), 1)
    planted = {(a_ids[i], b_ids[i]) for i in range(len(COPIES))}
    return root, planted


def folder_task(name: str, root: Path, seed: int = 0) -> dict:
    return {"name": name, "kind": "binary", "classes": ["x", "y"], "target": "class",
            "reader": {"name": "folder", "root": str(root), "splits": "none"},
            "image": {"size": 32, "mode": "L"}, "split": {**HOLDOUT, "seed": seed}}


def id_pairs(data, pairs, a: str = "a", b: str = "b") -> set[tuple[str, str]]:
    ia, ib = data.source_of(a).ids, data.source_of(b).ids
    return {(ia[i], ib[j]) for i, j in pairs}


def test_exactly_the_planted_copies_are_found(synthetic, tmp_path):
    root, planted = synthetic
    cfg = config(tmp_path / "cache", tmp_path / "run", [folder_task("a", root / "a"), folder_task("b", root / "b", 1)])
    data = prepare(cfg, progress=False)
    pairs = leakage.find_copies(data.source_of("a").cached, data.source_of("b").cached, cfg.leakage)
    assert id_pairs(data, pairs) == planted
    assert data.leakage["cross_duplicates"]["a"] == {"b": len(COPIES)}
    assert data.leakage["cross_duplicates"]["b"] == {"a": len(COPIES)}


def test_copies_in_two_datasets_split_by_medmtl_land_in_one_split(synthetic, tmp_path):
    root, planted = synthetic
    cfg = config(tmp_path / "cache", tmp_path / "run", [folder_task("a", root / "a"), folder_task("b", root / "b", 1)])
    data = prepare(cfg, progress=False)
    a, b = data.source_of("a"), data.source_of("b")
    split_a, split_b = dict(zip(a.ids, a.split)), dict(zip(b.ids, b.split))
    assert {split_a[x] == split_b[y] for x, y in planted} == {True}
    assert len({split_a[x] for x, _ in planted}) > 1  # the copies are not all lumped into one split
    assert data.leakage["excluded"] == {"a": {}, "b": {}}
    assert "-linked" in b.split_file.name and b.split_file.is_file()
    again = prepare(cfg, progress=False).source_of("b")  # the split file is reused as written
    assert list(again.split) == list(b.split)


def test_matches_are_cached_with_the_decode_cache(synthetic, tmp_path, monkeypatch):
    root, planted = synthetic
    cfg = config(tmp_path / "cache", tmp_path / "run", [folder_task("a", root / "a"), folder_task("b", root / "b", 1)])
    first = prepare(cfg, progress=False)
    assert list((tmp_path / "cache" / "leakage-t32").glob("*.npy"))

    def no_search(*args, **kwargs):
        raise AssertionError("matches were searched again instead of loaded from the cache")

    monkeypatch.setattr(leakage, "match_signatures", no_search)
    second = prepare(cfg, progress=False)
    assert second.leakage["cross_duplicates"] == first.leakage["cross_duplicates"]
    assert id_pairs(second, second.leakage["pairs"]["a|b"]) == planted
    with pytest.raises(AssertionError, match="searched again"):  # a new threshold is a new search
        prepare(cfg.model_copy(update={"leakage": cfg.leakage.model_copy(update={"min_correlation": 0.95})}),
                progress=False)


def signatures(thumbs: np.ndarray, tag: str) -> leakage.Signatures:
    keys = np.array([f"{tag}{i:06d}" for i in range(len(thumbs))])
    return leakage.Signatures.of(SimpleNamespace(keys=keys, pixel_hash=keys, thumbs=thumbs))


def smooth_thumbs(rng: np.random.Generator, n: int) -> np.ndarray:
    noise = rng.normal(size=(n, 32, 32)).astype(np.float32)
    field = gaussian_filter(noise, (0, 1.0, 1.0)) * 2 + gaussian_filter(noise, (0, 3.0, 3.0)) * 6
    return np.clip(128 + 40 * field / field.std(axis=(1, 2), keepdims=True), 0, 255).astype(np.uint8)


def test_search_is_vectorised_for_thousands_of_images():
    rng = np.random.default_rng(0)
    a, b = smooth_thumbs(rng, 6000), smooth_thumbs(rng, 6000)  # 36 million pairs: no Python loop over them
    planted = rng.choice(6000, size=40, replace=False)
    copies = a[planted].astype(np.float32) * 0.9 + 20 + rng.normal(0, 3, (40, 32, 32))
    b[:40] = np.clip(copies, 0, 255).astype(np.uint8)
    b[40] = 200  # a blank thumbnail never matches, not even another blank one
    a[planted[0] + 1 if planted[0] + 1 < 6000 else 0] = 200
    cfg = SimpleNamespace(min_correlation=0.9, min_detail_correlation=0.8)
    found = leakage.key_pairs(signatures(a, "a"), signatures(b, "b"), cfg)
    assert {(int(i), int(j)) for i, j in found} == {(int(p), k) for k, p in enumerate(planted)}
