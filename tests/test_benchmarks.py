"""The time_to_quality benchmark compares like with like: the same network on both sides, and a
short run of both ends with a test AUC."""
from __future__ import annotations

import importlib.util
import math

from tests.conftest import REPO, need_data

spec = importlib.util.spec_from_file_location("time_to_quality", REPO / "benchmarks" / "time_to_quality.py")
ttq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ttq)


def test_the_bare_loop_trains_medmtls_network():
    import torch

    from medmtl.config import load_config, override_config
    from medmtl.data.pipeline import TaskSpec
    from medmtl.engine.build import build_model

    cfg = override_config(load_config(ttq.CONFIG), {"model.trunk.in_chans": 1}, "test")
    medmtl = build_model(cfg, [TaskSpec(name="breastmnist", kind="binary", classes=("a", "b"), target="label", source="s")]).trunk
    bare = ttq.bare_model()
    n_bare = sum(p.numel() for n, p in bare.named_parameters() if not n.startswith("fc."))
    assert n_bare == sum(p.numel() for p in medmtl.parameters())
    x = torch.zeros(2, 1, 28, 28)
    assert bare.forward_features(x).shape == medmtl.forward_features(x).shape == (2, 512, 4, 4)
    assert ttq.milestones(100) == [50, 75] and ttq.milestones(2) == [1, 2]


def test_a_short_time_to_quality_run_reports_both_sides():
    need_data("medmnist")
    r = ttq.time_to_quality(epochs=2)
    for side in ("medmtl", "bare"):
        assert 0.0 <= r[f"{side}_test_auc"] <= 1.0 and r[f"{side}_seconds"] > 0
    assert math.isclose(r["ratio"], r["medmtl_seconds"] / r["bare_seconds"])
