"""The multi-task dataset: one item per image, labels for every task, masks for missing ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medmtl.data.dataset import MultiTaskDataset, main_box
from medmtl.data.samplers import SAMPLERS

TASKS = ["busi_cls", "busi_seg", "busi_det", "mias_severity", "breastmnist"]


@pytest.fixture(scope="module")
def train_set(shared_data):
    return MultiTaskDataset(shared_data, "train", TASKS, preset="none", train=False, size=32)


def test_shared_images_appear_once_and_tasks_are_counted(shared_data, train_set):
    n = {t: len(shared_data.rows(t, "train")) for t in TASKS}
    assert n["busi_cls"] == n["busi_seg"] == n["busi_det"]
    assert len(train_set) == n["busi_cls"] + n["mias_severity"] + n["breastmnist"]
    counts = np.bincount(train_set.task_ids, minlength=len(TASKS))
    assert counts[1] == counts[2] == 0          # BUSI items are drawn for busi_cls, the first listed
    assert counts[0] == n["busi_cls"] and counts[3] == n["mias_severity"]


def test_label_masks_route_each_item_to_its_tasks(shared_data, train_set, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the dataset opened an image file")

    monkeypatch.setattr(Image, "open", refuse)   # items come from the cache's memory map only
    loader = torch.utils.data.DataLoader(train_set, batch_size=len(train_set), shuffle=False)
    batch = next(iter(loader))
    m = batch["label_mask"]
    busi = batch["task"] == 0
    assert m["busi_cls"][busi].all() and m["busi_seg"][busi].all() and m["busi_det"][busi].all()
    assert not m["breastmnist"][busi].any() and not m["mias_severity"][busi].any()
    mias = batch["task"] == 3
    assert m["mias_severity"][mias].all() and not m["busi_cls"][mias].any()
    # a missing classification label is -1, never a class index
    assert (batch["labels"]["busi_cls"][~m["busi_cls"]] == -1).all()
    assert (batch["labels"]["breastmnist"][m["breastmnist"]] >= 0).all()
    # normal BUSI images: empty mask and objectness 0; lesion images: a box inside the image
    normal = busi & (batch["labels"]["busi_cls"] == 2)
    assert batch["labels"]["busi_seg"][normal].sum() == 0
    assert (batch["labels"]["busi_det"]["objectness"][normal] == 0).all()
    lesion = busi & (batch["labels"]["busi_cls"] != 2)
    boxes = batch["labels"]["busi_det"]["box"][lesion]
    assert (batch["labels"]["busi_det"]["objectness"][lesion] == 1).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes >= 0).all() and (boxes <= 32).all()


def test_segmentation_label_is_the_cached_mask(shared_data, train_set):
    i = int(np.flatnonzero(train_set.task_ids == 0)[0])
    item = train_set[i]
    row = train_set.items_[i, 2]
    cached = shared_data.source_of("busi_seg").cached
    expected = Image.fromarray(np.asarray(cached.mask(row))).resize((32, 32), Image.Resampling.NEAREST)
    agree = (item["labels"]["busi_seg"].numpy() == np.asarray(expected)).mean()
    assert agree > 0.97


def test_balanced_sampler_over_the_dataset(train_set):
    sampler = SAMPLERS.get("balanced")(train_set.task_ids, num_samples=3000, seed=0)
    drawn = train_set.task_ids[list(sampler)]
    shares = np.bincount(drawn, minlength=len(TASKS))[[0, 3, 4]] / 3000
    assert np.all(np.abs(shares - 1 / 3) < 0.04)


def test_main_box_picks_the_largest_lesion():
    boxes = np.array([[0, 0, 2, 2], [1, 1, 9, 5]], np.float32)
    np.testing.assert_array_equal(main_box(boxes), boxes[1])
    np.testing.assert_array_equal(main_box(np.zeros((0, 4), np.float32)), np.zeros(4))
