"""Frozen-trunk features are computed once per (trunk weights, images, views) and reused; frozen
stages are not back-propagated through."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import medmtl.evaluation.features as features
from medmtl.config import parse_config
from medmtl.data.dataset import MultiTaskDataset
from medmtl.engine.build import limit_items
from medmtl.engine.optim import freeze_stages
from medmtl.models.trunks import create_trunk
from medmtl.protocols import run_experiment
from tests.conftest import need_data

BREAST = {"name": "breastmnist", "kind": "binary", "classes": ["malignant", "benign_or_normal"], "target": "label",
          "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/breastmnist.npz"},
          "image": {"size": 28, "mode": "L"}, "split": {"method": "official"}}


def _raw(tmp_path, cache, trunk: dict, seeds=(0, 1)) -> dict:
    return {"name": "features", "seed": 0, "cache_dir": str(cache), "run_dir": str(tmp_path / "run"),
            "tasks": [BREAST], "leakage": {"policy": "off"},
            "data": {"batch_size": 32, "size": 28, "augmentation": "none"},
            "model": {"trunk": trunk}, "train": {"epochs": 1, "mlflow": False},
            "experiment": {"main_task": "breastmnist", "seeds": list(seeds), "tta": False,
                           "arms": [{"name": "fe", "strategy": "feature_extraction", "svm_c": [0.01, 1.0]}]}}


@pytest.fixture(scope="module")
def breast_data(tmp_path_factory, shared_cache):
    from medmtl.data.pipeline import prepare

    need_data("medmnist")
    cfg = parse_config(_raw(tmp_path_factory.mktemp("prep"), shared_cache, {"name": "test_tiny", "in_chans": 1}))
    return prepare(cfg, progress=False)


def _counting(monkeypatch) -> list:
    calls = []
    real = features.compute_features

    def counted(trunk, dataset, views=1, **kw):
        calls.append((dataset.split, len(dataset), views))
        return real(trunk, dataset, views, **kw)

    monkeypatch.setattr(features, "compute_features", counted)
    return calls


def test_features_are_reused_only_for_the_same_weights_rows_and_views(breast_data, monkeypatch):
    calls = _counting(monkeypatch)
    memo = features.FeatureMemo()
    torch.manual_seed(0)
    trunk = create_trunk("test_tiny", in_chans=1).eval()
    val = MultiTaskDataset(breast_data, "val", ["breastmnist"], size=28, in_chans=1)
    first = features.trunk_features(trunk, val, memo=memo)
    again = features.trunk_features(trunk, val, memo=memo)
    assert again is first and len(calls) == 1 and memo.hits == 1
    assert first[0].shape == (1, len(val), trunk.num_features) and not first[0].flags.writeable

    with torch.no_grad():                      # one weight changed: features computed afresh, and differ
        next(trunk.parameters()).view(-1)[0] += 1.0
    moved = features.trunk_features(trunk, val, memo=memo)
    assert len(calls) == 2 and not np.allclose(moved[0], first[0])
    features.trunk_features(trunk, val, views=8, memo=memo)                              # other views
    fewer = limit_items(MultiTaskDataset(breast_data, "val", ["breastmnist"], size=28, in_chans=1), 20, 0)
    features.trunk_features(trunk, fewer, memo=memo)                                     # other rows
    features.trunk_features(trunk, MultiTaskDataset(breast_data, "val", ["breastmnist"], size=24, in_chans=1),
                            memo=memo)                                                   # other size
    assert [c[1:] for c in calls[2:]] == [(len(val), 8), (20, 1), (len(val), 1)]
    assert trunk.training is False


def test_memo_drops_the_least_recently_used_entry_past_its_budget():
    memo = features.FeatureMemo(max_bytes=3 * 800)
    arrays = {k: (np.zeros((1, 10, 10), np.float64), np.zeros(0)) for k in "abcd"}   # 800 bytes each
    for k in "abc":
        memo.put(k, arrays[k])
    memo.get("a")                              # a used again: b is now the oldest
    memo.put("d", arrays["d"])
    assert list(memo.entries) == ["c", "a", "d"]


def test_svm_arm_computes_a_pretrained_trunks_features_once_across_seeds(tmp_path, shared_cache, monkeypatch):
    """Seeds 0 and 1 of a feature-extraction arm on ImageNet weights: one forward pass per split in all
    (the seed changes nothing in the trunk); on a randomly initialised trunk each seed has its own."""
    need_data("medmnist")
    calls = _counting(monkeypatch)
    raw = _raw(tmp_path / "imagenet", shared_cache, {"name": "efficientnet_lite0", "pretrained": "imagenet",
                                                     "in_chans": 1})
    run_experiment(parse_config(raw), progress=False)
    assert sorted(c[0] for c in calls) == ["test", "train", "val"]

    calls.clear()
    raw = _raw(tmp_path / "random", shared_cache, {"name": "test_tiny", "in_chans": 1})
    out = run_experiment(parse_config(raw), progress=False)
    assert sorted(c[0] for c in calls) == ["test", "test", "train", "train", "val", "val"]
    assert (out / "results" / "metrics.json").is_file()


@pytest.mark.parametrize("name, kw, k", [("resnet18", {"small_input": True}, 2), ("resnext29", {"width": 0.125}, 2),
                                         ("test_tiny", {}, 1)])
def test_frozen_stages_are_not_back_propagated_through(name, kw, k):
    """Freezing the first k stages cuts the autograd graph there: their outputs carry no gradient, and
    a backward pass computes none for their parameters (so it never runs through them)."""
    trunk = create_trunk(name, in_chans=3, **kw).train()
    frozen = {id(p) for p in freeze_stages(trunk, k)}
    outs = []
    # a stage's output is its last module's (timm stages are views built around the model's own modules)
    last = [list(s.children())[-1] if isinstance(s, torch.nn.Sequential) else s for s in trunk.stages()]
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o)) for m in last]
    trunk(torch.randn(2, 3, 32, 32)).sum().backward()
    for h in hooks:
        h.remove()
    assert [o.requires_grad for o in outs] == [False] * k + [True] * (len(outs) - k)
    assert all(p.grad is None for p in trunk.parameters() if id(p) in frozen)
    assert all(p.grad is not None for p in trunk.parameters() if id(p) not in frozen)
