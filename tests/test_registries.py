"""Every registry's names are pinned: a component that fails to register is a failing test."""
from __future__ import annotations

import pytest

from medmtl._registry import Registry


def _registries():
    from medmtl.data.readers import READERS
    from medmtl.data.samplers import SAMPLERS
    from medmtl.data.transforms import PRESETS
    from medmtl.metrics import METRICS
    from medmtl.models.heads import HEADS
    from medmtl.models.trunks import TRUNKS
    from medmtl.mtl.weightings import WEIGHTINGS
    from medmtl.protocols.strategies import STRATEGIES

    return {
        "readers": (READERS, ["busi", "folder", "manifest", "medmnist", "mias", "volume"]),
        "samplers": (SAMPLERS, ["balanced", "cyclic", "proportional"]),
        "presets": (PRESETS, ["none", "s0", "s2", "upright"]),
        "heads": (HEADS, ["aux_conditioned", "box", "fc100_fc2", "feature_transfer", "linear", "segmentation",
                          "transfer"]),
        "trunks": (TRUNKS, ["alexnet", "resnext29", "test_tiny"]),
        "weightings": (WEIGHTINGS, ["cagrad", "dwa", "equal", "fixed", "main_aux", "mean", "mgda", "nashmtl",
                                    "pcgrad", "rlw", "spearman", "uncertainty", "upgrad"]),
        "strategies": (STRATEGIES, ["feature_extraction", "finetune", "freeze_sweep", "joint", "mtl", "scratch",
                                    "sequential", "stl"]),
        "metrics_core": (METRICS, None),
    }


@pytest.mark.parametrize("family", sorted(_registries()))
def test_registry_names_are_pinned(family):
    registry, expected = _registries()[family]
    if expected is None:
        assert {"auc", "accuracy", "balanced_accuracy", "cross_entropy", "dice", "iou", "box_iou", "hit_rate", "f1",
                "sensitivity", "specificity"} <= set(registry.list())
    else:
        assert registry.list() == expected


def test_duplicate_and_unknown_names_are_refused_with_the_choices():
    reg = Registry("thing")
    reg.register("alpha")(object)
    with pytest.raises(ValueError, match="thing 'alpha' is already registered"):
        reg.register("alpha")(int)
    reg.register("alpha", override=True)(int)
    with pytest.raises(KeyError, match=r"'alpah' is not a registered thing; choose one of \['alpha'\] \(did you mean 'alpha'\?\)"):
        reg.get("alpah")
