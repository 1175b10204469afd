"""The full-protocol cost of a study (benchmarks/study_cost.py, ``gpu_check.py estimate``): the plan
lists exactly the trainings a real run launches, with their steps and forward passes; FLOPs are
counted right (checked by hand); the estimate subcommand writes its file and table."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, need_data

sys.path.insert(0, str(REPO / "benchmarks"))


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module      # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sc = _module("study_cost")
gpu_check = _module("gpu_check")


# -- FLOPs, by hand ------------------------------------------------------------------------------
def _counted(module, x):
    with sc.count_flops() as fc:
        y = module(x)
        forward = fc.get_total_flops()
        y.sum().backward()
    return forward, fc.get_total_flops()


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_a_convolution_costs_its_forward_once_per_gradient(groups):
    """2 x N x H_out x W_out x C_out x (C_in / groups) x k x k forward; the input and the weight
    gradients cost as much again each. torch's own formula (2.14) ignores ``groups`` in the weight
    gradient, so the depthwise case (groups=8) is the one a plain FlopCounterMode gets wrong."""
    import torch

    conv = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    by_hand = 2 * 2 * 4 * 4 * 16 * (8 // groups) * 3 * 3
    assert _counted(conv, x) == (by_hand, 3 * by_hand)
    assert _counted(conv, x.detach()) == (by_hand, 2 * by_hand)   # an image needs no gradient


def test_a_linear_layer_costs_three_matmuls():
    import torch

    linear = torch.nn.Linear(5, 7)
    assert _counted(linear, torch.randn(3, 5, requires_grad=True)) == (2 * 3 * 5 * 7, 3 * 2 * 3 * 5 * 7)


def _tiny_build(freeze: int = 0, size: int = 32, batch: int = 4) -> dict:
    return {"model": {"trunk": {"name": "test_tiny", "pretrained": None, "in_chans": 3, "small_input": False,
                                "kwargs": {}}, "heads": {}, "sharing": "hard", "soft_weight": 1e-3},
            "batch_size": batch, "size": size, "in_chans": 3,
            "train": {"freeze_stages": freeze, "channels_last": True, "precision": "32-true", "deterministic": True,
                      "grad_clip": None, "accelerator": "auto",
                      "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 0.0},
                      "weighting": {"name": "mean", "kwargs": {}}},
            "tasks": [{"name": "t", "kind": "binary", "classes": ["a", "b"], "target": "class", "source": "s",
                       "role": "main", "metric": "auc"}]}


def test_step_flops_of_the_tiny_network_are_its_layers_by_hand():
    """test_tiny (3->8 stride-2 conv, 8->16 stride-2 conv, mean pool) and a 16->2 linear head at 32 px,
    batch 4: the first convolution gets no input gradient, a frozen stage no gradient at all, and a
    warm-up step (trunk frozen) back-propagates through the head's weights only."""
    stem, stage1, head = 2 * 4 * 16 * 16 * 8 * 3 * 9, 2 * 4 * 8 * 8 * 16 * 8 * 9, 2 * 4 * 16 * 2
    forward = stem + stage1 + head
    f = sc.step_flops(_tiny_build())
    assert f["forward_per_image"] * 4 == forward
    assert f["step"] == forward + stem + 2 * stage1 + 2 * head
    assert f["warmup_step"] == forward + head
    assert sc.step_flops(_tiny_build(freeze=1))["step"] == forward + stage1 + 2 * head


# -- the plan against a real run ---------------------------------------------------------------------
def _record(monkeypatch):
    """Steps per run dir and forward images per kind, as the engine and the scorers really run them."""
    from medmtl.engine import loop
    from medmtl.evaluation import features, scoring

    steps, images = Counter(), Counter()
    step = loop.Trainer.train_step

    def train_step(self, batch):
        steps[str(self.run_dir)] += 1
        return step(self, batch)

    predict, split_scores, compute = loop.predict_split, scoring.split_scores, features.compute_features

    def predict_split(model, loader, *a, **kw):
        images["validation"] += len(loader.dataset)
        return predict(model, loader, *a, **kw)

    def scores(model, dataset, *a, tta=False, **kw):
        images["scoring"] += len(dataset) * (sc.TTA_VIEWS if tta else 1)
        return split_scores(model, dataset, *a, tta=tta, **kw)

    def compute_features(trunk, dataset, views=1, *a, **kw):
        images["features"] += len(dataset) * views
        return compute(trunk, dataset, views, *a, **kw)

    monkeypatch.setattr(loop.Trainer, "train_step", train_step)
    monkeypatch.setattr(loop, "predict_split", predict_split)
    monkeypatch.setattr(scoring, "split_scores", scores)
    monkeypatch.setattr(features, "compute_features", compute_features)
    return steps, images


def _planned_images(plan) -> Counter:
    out = Counter()
    for f in plan.forwards:
        kind = "validation" if f.where.endswith("validation") else "features" if " features " in f.where else "scoring"
        out[kind] += f.images
    return out


def _reduced(name: str, tmp_path: Path, cache: Path, edit) -> dict:
    raw = yaml.safe_load((REPO / "experiments" / f"{name}.yaml").read_text())
    raw.pop("profiles", None)
    raw.update(run_dir=str(tmp_path / "run"), cache_dir=str(cache))
    raw["model"]["trunk"] = {"name": "test_tiny"}
    raw["data"].update(batch_size=8, limit_train=20, limit_eval=12, limit_test=12, augmentation="none")
    raw["train"].update(epochs=2, mlflow=False, early_stopping={"monitor": raw["train"]["early_stopping"]["monitor"],
                                                                "patience": None})
    raw["experiment"].pop("reference", None)
    edit(raw)
    return raw


def _compare_with_a_real_run(raw, monkeypatch):
    from medmtl.config import parse_config
    from medmtl.protocols import run_experiment

    cfg = parse_config(raw, "reduced study")
    plan = sc.plan_study(cfg)
    planned = {t.where: t.steps for t in plan.trainings}
    assert len(planned) == len(plan.trainings), "two planned trainings share a run dir"
    steps, images = _record(monkeypatch)
    run_dir = run_experiment(cfg, progress=False)
    ran = {Path(k).relative_to(run_dir).as_posix(): v for k, v in steps.items()}
    assert ran == planned
    assert _planned_images(plan) == images
    return plan


def test_the_plan_of_a_reduced_loto_study_is_what_it_runs(tmp_path, shared_cache, monkeypatch):
    """Study 2 (LOTO trials, transfers by features and fine-tuning, whole-pool joint models and the
    ImageNet/scratch arms of every application) on three of its tasks, two grid points and one
    seed: every training's run dir and step count, and the images of every forward pass, as run."""
    for name in ("busi", "medmnist"):
        need_data(name)
    keep = ["busi_cls", "breastmnist", "retinamnist"]

    def edit(raw):
        raw["tasks"] = [t for t in raw["tasks"] if t["name"] in keep]
        raw["model"]["trunk"]["pretrained"] = None       # test_tiny has no ImageNet weights
        raw["loto"].update(pool=keep, grid={"train.optimizer.lr": [1e-3, 1e-4]}, seeds=[0], lrs=[1e-3, 1e-4],
                           svm_c=[1.0])
        exp = raw["experiment"]
        exp.update(seeds=[0], applications={k: {"main_task": k, "tasks": keep} for k in ("busi_cls", "retinamnist")})
        for arm in exp["arms"]:
            arm.update({"svm_c": [1.0]} if arm["strategy"] == "feature_extraction" else {})
        exp["arms"][-1]["lrs"] = [1e-3]                   # scratch: one rate, imagenet_ft keeps two

    plan = _compare_with_a_real_run(_reduced("s2-pretrain-pool", tmp_path, shared_cache, edit), monkeypatch)
    # 2 left-out groups x 2 combinations, 3 targets x 2 rates, 2 whole-pool models; 2 applications x 3
    assert len(plan.trainings) == 4 + 6 + 2 + 2 * 3


def test_the_plan_of_a_reduced_cv_study_is_what_it_runs(tmp_path, shared_cache, monkeypatch):
    """Study 3 (a representative split chosen by balance among candidates, every arm on its folds,
    TTA scoring, a freezing sweep) with two candidates of two folds, plus a sequential transfer and
    a fine-tuning from another arm's model, so that every training strategy is run once."""
    for name in ("busi", "mini_mias", "medmnist"):
        need_data(name)

    def edit(raw):
        exp = raw["experiment"]
        exp["cv"].update(n_splits=2, candidates=2)
        exp["arms"][2]["freeze"] = [0, 2]
        exp["arms"] += [{"name": "tl", "strategy": "sequential", "source": ["breastmnist"],
                         "head": {"name": "transfer"}},
                        {"name": "ft", "strategy": "finetune", "source_arm": "stl", "lrs": [1e-3, 1e-4]}]
        raw["model"]["trunk"]["pretrained"] = None

    plan = _compare_with_a_real_run(_reduced("s3-multidomain", tmp_path, shared_cache, edit), monkeypatch)
    assert len(plan.trainings) == 2 * (1 + 1 + 2 + 2 + 2)     # folds x (mtl, stl, freeze x2, tl x2, ft x2)


def test_every_registered_strategy_has_a_cost_plan():
    from medmtl.protocols import STRATEGIES

    assert sorted(sc.PLANNED) == STRATEGIES.list()


# -- the estimate subcommand ------------------------------------------------------------------------
def test_estimate_writes_the_counts_flops_and_time_of_a_tiny_study(tmp_path, shared_cache):
    """Two arms x two seeds on BreastMNIST (546/78/156 images), 2 epochs of 3 steps at batch 16: the
    step floor dominates test_tiny's FLOPs, so every number is known by hand."""
    need_data("medmnist")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "cache_dir": str(shared_cache), "run_dir": str(tmp_path / "run"),
        "tasks": [{"name": "breast", "kind": "binary", "classes": ["malignant", "normal_or_benign"], "target": "label",
                   "reader": {"name": "medmnist", "path": "${MEDMTL_DATA}/medmnist/breastmnist.npz"},
                   "image": {"size": 28, "mode": "L"}, "split": {"method": "official"}}],
        "data": {"batch_size": 16}, "model": {"trunk": {"name": "test_tiny"}},
        "train": {"epochs": 2, "steps_per_epoch": 3, "mlflow": False},
        "experiment": {"main_task": "breast", "seeds": [0, 1],
                       "arms": [{"name": "a", "strategy": "stl"}, {"name": "b", "strategy": "finetune", "lrs": [0.1]}]}}))
    out = tmp_path / "est.json"
    env = {**os.environ, "MEDMTL_DATA": os.environ.get("MEDMTL_DATA", str(REPO.parent / "shared" / "datasets"))}
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "estimate", "--config", str(config),
                          "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    doc = json.loads(out.read_text())
    assert doc["method"] == "FLOP estimate (no GPU measured)" and {"commit", "date", "machine"} <= set(doc)
    s = doc["studies"]["tiny"]
    assert (s["trainings"], s["steps"], s["estimate"]["label"]) == (4, 4 * 2 * 3, "estimate")
    # per training: validation 2 epochs x ceil(78 / 16) batches; scoring val (78) and test (156) in batches of 128
    calls = 4 * (2 * math.ceil(78 / 16) + 1 + 2)
    assert s["forward_calls"] == calls and s["forward_images"] == 4 * (2 * 78 + 78 + 156)
    c = doc["constants"]
    assert s["estimate"]["training_s"] == pytest.approx(24 * c["step_floor_s"])
    assert s["estimate"]["forward_s"] == pytest.approx(calls * c["forward_floor_s"])
    assert len(s["models"]) == 1 and s["flops_per_step"]["min"] == s["flops_per_step"]["max"] > 0
    table = gpu_check.render_estimate(doc)
    assert "| tiny | 4 | 24 |" in table and "(estimate)" in table and "no GPU measured" in table
    assert table in run.stdout


def test_the_committed_estimate_covers_the_five_studies_in_their_full_setting():
    doc = json.loads(gpu_check.ESTIMATE.read_text())
    assert doc["method"] == gpu_check.METHOD
    assert sorted(doc["studies"]) == sorted(gpu_check.STUDIES)
    for name, s in doc["studies"].items():
        assert s["profile"] is None and s["config"] == f"experiments/{name}.yaml"
        assert s["trainings"] == len(s["trainings_list"]) > 0 and s["estimate"]["total_s"] > 0
        assert s["steps"] == sum(epochs * spe for _, _, epochs, spe, _, _ in s["trainings_list"])
    rows = gpu_check.render_estimate(doc).splitlines()
    assert [r.split("|")[1].strip() for r in rows[2:2 + len(gpu_check.STUDIES)]] == list(doc["studies"])
