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


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_part_times_both_orders_and_parts_merge_into_one_file(tmp_path, monkeypatch):
    import json

    bench = _bench_module()
    monkeypatch.setattr(bench, "LAYOUT_TRUNKS", {"resnext29_w0.125": ({"name": "resnext29", "width": 0.125}, 32, 4)})
    layout = bench.layout_ratios(rounds=2, steps=1)
    r = layout["resnext29_w0.125"]
    assert len(r["rounds"]) == 2 and r["contiguous_ms"] > 0 and r["channels_last_ms"] > 0
    assert math.isclose(r["value"], sorted(r["rounds"])[0] / 2 + sorted(r["rounds"])[1] / 2, abs_tol=2e-3)
    out = tmp_path / "bench.json"
    bench._store(out, {"cache": {"cache_second_vs_first": {"value": 30.0}}})
    bench._store(out, {"layout": {"layout_resnext29_w0.125": r}})
    doc = json.loads(out.read_text())
    assert set(doc["parts"]) == {"cache", "layout"}          # a later part keeps the earlier one
    assert doc["parts"]["cache"]["values"]["cache_second_vs_first"]["value"] == 30.0
    assert {"commit", "date", "machine"} <= set(doc["parts"]["layout"])


def test_channels_last_changes_the_memory_order_not_the_network(tmp_path):
    """train.channels_last (the default) gives the same outputs as contiguous weights, to rounding."""
    import torch

    from medmtl.config.loader import parse_config
    from medmtl.data.pipeline import TaskSpec
    from medmtl.engine.build import build_model

    raw = {"name": "layout", "run_dir": str(tmp_path), "model": {"trunk": {"name": "resnext29", "kwargs": {"width": 0.125}}},
           "tasks": [{"name": "t", "kind": "binary", "classes": ["a", "b"], "target": "class",
                      "reader": {"name": "folder", "root": str(tmp_path)}}]}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    spec = [TaskSpec(name="t", kind="binary", classes=("a", "b"), target="class", source="s")]
    torch.manual_seed(0)
    fast = build_model(parse_config(raw), spec).eval()
    torch.manual_seed(0)
    plain = build_model(parse_config({**raw, "train": {"channels_last": False}}), spec).eval()
    conv = next(p for p in fast.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(p.is_contiguous() for p in plain.parameters())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        a, b = fast(x)["t"][0], plain(x)["t"][0]
    assert torch.allclose(a, b, atol=1e-5) and a.abs().max() > 0
