"""What a training run is built from: the model of a config, and its training, validation and
scoring datasets (the same calls build them for training, for scoring and for predict)."""
from __future__ import annotations

import logging

import numpy as np
import torch

from medmtl.data.dataset import MultiTaskDataset
from medmtl.errors import MedmtlError
from medmtl.models.heads.build import build_heads
from medmtl.models.multitask import MultiTaskModel
from medmtl.models.trunks import create_trunk

log = logging.getLogger("medmtl.engine")


def task_specs_dict(data, names) -> dict:
    return {t: data.tasks[t] for t in names}


def build_model(cfg, specs: list):
    """Trunk + heads from ``cfg.model`` for ``specs`` (the same call builds the model for predict)."""
    t = cfg.model.trunk
    trunk = create_trunk(t.name, pretrained=t.pretrained, in_chans=t.in_chans, small_input=t.small_input, **t.kwargs)
    head_cfg = {k: {"name": h.name, "tasks": h.tasks, **h.kwargs} for k, h in cfg.model.heads.items()}
    heads = build_heads(specs, head_cfg, trunk.num_features, trunk.feature_info)
    model = MultiTaskModel(trunk, heads, specs, sharing=cfg.model.sharing, soft_weight=cfg.model.soft_weight)
    # channels-last weights are enough: the first convolution converts its input, the rest follow
    return model.to(memory_format=torch.channels_last) if cfg.train.channels_last else model


def limit_items(dataset, limit: int | None, seed: int):
    """Keep at most ``limit`` items per task (seeded), for quick runs; logged, never silent."""
    if not limit:
        return dataset
    rng = np.random.default_rng(seed)
    keep = []
    for t in np.unique(dataset.task_ids):
        idx = np.flatnonzero(dataset.task_ids == t)
        keep.append(np.sort(rng.choice(idx, size=min(limit, len(idx)), replace=False)))
    kept = np.sort(np.concatenate(keep))
    log.info("%s split limited to %d of %d images (at most %d per task)", dataset.split, len(kept), len(dataset), limit)
    dataset.items_ = dataset.items_[kept]
    return dataset


EVAL_SUBSET_SEED = 20171  # one fixed seed: every arm and seed scores the same val/test subset


def scoring_subset(dataset, cfg, split: str):
    """The images of ``split`` that final scoring uses: ``limit_eval`` (val) / ``limit_test`` (test)
    per task, the same subset for every arm and training seed so that paired tests stay paired."""
    limit = {"val": cfg.data.limit_eval, "test": cfg.data.limit_test}.get(split)
    return limit_items(dataset, limit, EVAL_SUBSET_SEED)


def build_datasets(cfg, data, tasks: list[str]):
    kw = dict(tasks=tasks, preset=cfg.data.augmentation, size=cfg.data.size, in_chans=cfg.model.trunk.in_chans)
    train = limit_items(MultiTaskDataset(data, "train", train=True, **kw), cfg.data.limit_train, cfg.seed)
    val = limit_items(MultiTaskDataset(data, "val", train=False, **kw), cfg.data.limit_eval, cfg.seed + 1)
    if len(train) == 0:
        raise MedmtlError(f"no training images for tasks {tasks}")
    return train, val
