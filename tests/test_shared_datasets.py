"""Every shared dataset through its reader: counts from ../shared/datasets/README.md."""
from __future__ import annotations

import numpy as np
import pytest

from medmtl.data.inspect import inspect


@pytest.fixture(scope="session")
def report(shared_data):
    return inspect(shared_data)


def split_counts(report, task):
    return report["tasks"][task]["splits"]


def totals(report, task):
    out = {}
    for counts in split_counts(report, task).values():
        for cls, n in counts.items():
            out[cls] = out.get(cls, 0) + n
    return out


def test_brain_tumor_counts_duplicates_and_grouped_split(report, shared_data):
    assert totals(report, "brain_tumor") == {"no": 98, "yes": 155}
    assert report["tasks"]["brain_tumor"]["duplicate_groups"] == 22
    src = shared_data.source_of("brain_tumor")
    # every exact/near duplicate group sits inside one split: no copy crosses train/test
    for g in np.unique(src.duplicate_labels):
        assert len(set(src.split[src.duplicate_labels == g])) == 1
    n = len(src)
    sizes = {s: int((src.split == s).sum()) for s in ("train", "val", "test")}
    assert abs(sizes["train"] / n - 0.70) < 0.05 and abs(sizes["test"] / n - 0.15) < 0.05


def test_skin_official_split_with_val_carved_from_train(report):
    s = split_counts(report, "skin")
    assert s["test"] == {"benign": 360, "malignant": 300}
    assert s["train"]["benign"] + s["val"]["benign"] == 1440
    assert s["train"]["malignant"] + s["val"]["malignant"] == 1197
    val = s["val"]["benign"] + s["val"]["malignant"]
    assert 0.12 < val / 2637 < 0.18
    # train/malignant/768.jpg and 769.jpg are identical (README)
    assert report["tasks"]["skin"]["duplicate_groups"] >= 1


def test_pcam_official_split(report):
    assert split_counts(report, "pcam") == {
        "train": {"0": 5000, "1": 5000}, "val": {"0": 1500, "1": 1500}, "test": {"0": 1500, "1": 1500}}


def test_busi_class_masks_and_boxes(report, shared_data):
    assert totals(report, "busi_cls") == {"benign": 437, "malignant": 210, "normal": 133}
    assert sum(totals(report, "busi_seg").values()) == 780
    src = shared_data.source_of("busi_cls")
    recs = src.cached.records
    multi = [r for r in recs if len(r.masks) > 1]
    assert len(multi) == 17                       # README: 17 images have extra _mask_1/_mask_2 files
    normal = [r for r in recs if r.labels["class"] == "normal"]
    assert all(len(r.boxes) == 0 for r in normal)
    assert all(src.cached.mask(i).max() == 0 for i, r in enumerate(recs) if r.labels["class"] == "normal")
    lesions = [i for i, r in enumerate(recs) if r.labels["class"] != "normal"]
    assert all(len(recs[i].boxes) >= 1 for i in lesions)
    # the box of the largest lesion encloses the resized mask's foreground
    i = lesions[0]
    m = np.asarray(src.cached.mask(i))
    ys, xs = np.nonzero(m)
    w, h = src.cached.native_size[i]
    s = m.shape[0]
    box = recs[i].boxes.max(axis=0) * [s / w, s / h, s / w, s / h]
    assert xs.min() >= recs[i].boxes[:, 0].min() * s / w - 1 and xs.max() <= box[2] + 1
    assert ys.max() <= box[3] + 1


def test_mias_labels_groups_and_box_frame(report, shared_data):
    assert totals(report, "mias_severity") == {"normal": 207, "benign": 63, "malignant": 52}
    assert totals(report, "mias_tissue") == {"F": 106, "G": 104, "D": 112}
    src = shared_data.source_of("mias_severity")
    recs = {r.id: r for r in src.cached.records}
    assert recs["mdb144"].labels["severity"] == "malignant"   # one benign and one malignant row
    assert recs["mdb001"].group == recs["mdb002"].group != recs["mdb003"].group
    assert report["tasks"]["mias_severity"]["groups"] == 161   # 322 films, one pair each (no duplicates)
    # mdb001: x=535, y=425, r=197 in the 1024 frame, origin bottom-left; stored at 256 px
    np.testing.assert_allclose(recs["mdb001"].boxes[0], [(535 - 197) / 4, (1024 - 425 - 197) / 4,
                                                        (535 + 197) / 4, (1024 - 425 + 197) / 4])
    # NOTE 3 films (calcifications without coordinates) have no box label; normal films have 0 boxes
    assert "box" not in recs["mdb216"].labels and len(recs["mdb003"].boxes) == 0


def test_medmnist_official_splits(report):
    bm = split_counts(report, "breastmnist")
    assert {k: sum(v.values()) for k, v in bm.items()} == {"train": 546, "val": 78, "test": 156}
    rm = split_counts(report, "retinamnist")
    assert {k: sum(v.values()) for k, v in rm.items()} == {"train": 1080, "val": 120, "test": 400}
    assert list(rm["train"]) == ["0", "1", "2", "3", "4"]


def test_lidc_nine_characteristics_through_manifest(report, shared_data):
    names = ["malignancy", "subtlety", "internal_structure", "calcification", "sphericity", "margin",
             "lobulation", "spiculation", "texture"]
    for n in names:
        t = report["tasks"][f"lidc_{n}"]
        assert t["images"] == 29 and t["groups"] == 4, n
    src = shared_data.source_of("lidc_malignancy")
    assert src.cached.has_mask.all()
    # one patient, one split
    for g in set(src.groups):
        assert len(set(src.split[src.groups == g])) == 1


def test_no_group_crosses_splits_anywhere(shared_data):
    for key, src in shared_data.sources.items():
        by_group = {}
        for g, s in zip(src.groups, src.split):
            by_group.setdefault(g, set()).add(s)
        assert all(len(v) == 1 for v in by_group.values()), key


def test_inspect_json_shape(report):
    t = report["tasks"]["busi_seg"]
    assert set(t["splits"]["train"]) == {"images"}
    for task in report["tasks"].values():
        assert {"splits", "groups", "duplicate_groups", "skipped"} <= set(task)
        assert task["skipped"] == []      # the shared data has no unreadable files
