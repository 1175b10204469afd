"""The time_to_quality benchmark compares like with like: the same network on both sides, and a
short run of both ends with a test AUC; the GPU check dry-runs here."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

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


def test_gpu_check_dry_runs_every_head_sharing_and_precision_here(tmp_path, shared_cache):
    """``gpu_check.py check --dry-run`` on this machine's device: the 12 head x sharing x precision
    trainings finish (on the CPU, 16-mixed runs as Fabric's bf16), one training twice gives the same
    weights bit for bit, every distinct model of the five studies takes a timed step (tiny trunk) and
    gives each full protocol an expected time, and the Ray grid's two trials finish."""
    need_data("busi")
    env = {**os.environ, "MEDMTL_DATA": os.environ.get("MEDMTL_DATA", str(REPO.parent / "shared" / "datasets")),
           "MEDMTL_GPU_CHECK_CACHE": str(shared_cache)}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "check", "--no-install",
                          "--dry-run", "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    matrix = doc["heads"]["matrix"]
    assert sorted(matrix) == sorted(f"{h}/{s}/{p}" for h in ("separate", "feature_transfer")
                                    for s in ("hard", "soft") for p in ("32-true", "16-mixed", "bf16-mixed"))
    assert all("busi_seg" in v["val"] and "busi_det" in v["val"] for v in matrix.values())
    assert doc["heads"]["same_seed_same_weights"] is True
    estimate = json.loads((REPO / "experiments" / "results" / "gpu-estimate.json").read_text())
    times = doc["study_times"]["studies"]
    assert sorted(times) == sorted(estimate["studies"]) and len(times) == 5
    for name, t in times.items():
        assert t["errors"] == [] and sorted(t["models"]) == sorted(estimate["studies"][name]["models"])
        assert t["expected_s"] > 0 and t["steps"] == estimate["studies"][name]["steps"]
    assert [t["status"] for t in doc["ray"]["trials"]] == ["done", "done"]
