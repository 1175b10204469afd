"""Study 4 (classification, detection and segmentation of BUSI on one trunk): the feature-transfer
head, per-image segmentation/detection evaluation with CIs, and a reduced run of the shipped config."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from medmtl.data.pipeline import TaskSpec
from medmtl.evaluation.predictions import dense_metrics_of, per_image_metrics
from medmtl.metrics import METRICS
from medmtl.models.heads import HEADS, Features
from tests.conftest import REPO, assert_beats_chance, need_data


def spec(name: str, kind: str, classes=()) -> TaskSpec:
    return TaskSpec(name=name, kind=kind, classes=tuple(classes), target=name, source="busi")


TASKS = [spec("cls", "multiclass", ("benign", "malignant", "normal")), spec("seg", "segmentation"),
         spec("det", "detection")]


def resnet_pyramid(x: torch.Tensor):
    """A 5-stage pyramid (4 decoder steps, so the gate acts on several of them)."""
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, features_only=True)
    return net.feature_info.get_dicts(), net(x)


def head_and_features(size: int = 32, **kwargs):
    x = torch.randn(3, 3, size, size)
    info, pyramid = resnet_pyramid(x)
    torch.manual_seed(0)
    head = HEADS.get("feature_transfer")(TASKS, info[-1]["num_chs"], info, **kwargs)
    return head, Features(pyramid[-1].mean(dim=(2, 3)), pyramid, (size, size))


def grads_of(module) -> dict[str, bool]:
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


# -- the head ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 48])
def test_feature_transfer_output_shapes(size):
    head, feats = head_and_features(size)
    out = head(feats)
    assert set(out) == {"cls", "seg", "det"}
    assert out["cls"].shape == (3, 3)
    assert out["seg"].shape == (3, 1, size, size)
    assert out["det"].shape == (3, 5)
    box = out["det"][:, :4]
    assert (box[:, 2] >= box[:, 0]).all() and (box[:, 3] >= box[:, 1]).all()


def test_classification_loss_trains_the_segmentation_and_detection_branches():
    head, feats = head_and_features()
    head(feats)["cls"].logsumexp(1).sum().backward()
    g = grads_of(head)
    # the transferred maps: the decoder's first step and the detection conv
    assert all(v for n, v in g.items() if n.startswith(("up.0.", "det_conv.")))
    # what lies downstream of the transfer point gets nothing from the classification loss
    assert not any(v for n, v in g.items() if n.startswith(("up.1.", "up.3.", "seg_logits.", "det_mlp.", "gates.")))


def test_segmentation_loss_trains_the_gate_and_through_it_the_classification_branch():
    head, feats = head_and_features()
    head(feats)["seg"].sigmoid().mean().backward()
    g = grads_of(head)
    assert all(v for n, v in g.items() if n.startswith(("gates.", "cls_conv.", "from_seg.", "from_det.")))
    assert not any(v for n, v in g.items() if n.startswith(("classifiers.", "det_mlp.")))


def test_without_the_gate_segmentation_does_not_reach_the_classification_branch():
    head, feats = head_and_features(gate=False)
    assert head.gates is None
    head(feats)["seg"].sigmoid().mean().backward()
    assert not any(v for n, v in grads_of(head).items() if n.startswith(("cls_conv.", "from_det.")))


def test_parallel_heads_do_not_share_gradients():
    """The contrast with arm (a): a linear head's loss never reaches the decoder or the box head."""
    x = torch.randn(2, 3, 32, 32)
    info, pyramid = resnet_pyramid(x)
    feats = Features(pyramid[-1].mean(dim=(2, 3)).detach(), [p.detach() for p in pyramid], (32, 32))
    lin = HEADS.get("linear")([TASKS[0]], info[-1]["num_chs"], info)
    seg = HEADS.get("segmentation")([TASKS[1]], 0, info)
    lin(feats)["cls"].sum().backward()
    assert all(p.grad is None for p in seg.parameters())


@pytest.mark.parametrize("tasks, match", [
    ([TASKS[0], TASKS[1]], r"exactly one segmentation and one detection task; got 1 classification"),
    ([TASKS[1], TASKS[2]], r"at least one classification task"),
    ([TASKS[0], TASKS[1], TASKS[2], spec("seg2", "segmentation")], r"2 segmentation \(\['seg', 'seg2'\]\)"),
])
def test_feature_transfer_refuses_the_wrong_task_mix(tasks, match):
    info = [{"num_chs": 8, "reduction": 2}, {"num_chs": 16, "reduction": 4}]
    with pytest.raises(ValueError, match=match):
        HEADS.get("feature_transfer")(tasks, 16, info)


def test_feature_transfer_refuses_a_multilabel_task():
    info = [{"num_chs": 8, "reduction": 2}, {"num_chs": 16, "reduction": 4}]
    with pytest.raises(ValueError, match="kind 'multilabel', which head 'feature_transfer' does not support"):
        HEADS.get("feature_transfer")([spec("m", "multilabel", ("a", "b")), *TASKS[1:]], 16, info)


# -- per-image segmentation/detection evaluation ------------------------------------------------
def masks() -> np.ndarray:
    m = np.zeros((4, 16, 16), int)
    m[0, 2:8, 2:8] = 1
    m[1, 4:12, 4:12] = 1
    m[2, 0:5, 10:16] = 1          # image 3 is a normal scan: empty mask
    return m


def boxes() -> np.ndarray:
    b = np.array([[0.1, 0.1, 0.5, 0.5, 1], [0.2, 0.3, 0.9, 0.8, 1], [0.0, 0.6, 0.3, 1.0, 1], [0, 0, 0, 0, 0]], float)
    return b


def test_a_perfect_prediction_scores_one_and_an_empty_one_zero():
    m = masks()
    perfect = per_image_metrics("segmentation", m, m.astype(float))
    empty = per_image_metrics("segmentation", m, np.zeros(m.shape))
    assert perfect["dice"].tolist() == [1, 1, 1, 1] and perfect["iou"].tolist() == [1, 1, 1, 1]
    assert empty["dice"][:3].tolist() == [0, 0, 0] and empty["dice"][3] == 1   # empty on empty is right
    assert perfect["lesion"].tolist() == [1, 1, 1, 0]
    b = boxes()
    hit = per_image_metrics("detection", b, b)
    miss = per_image_metrics("detection", b, np.zeros_like(b))
    assert hit["hit_rate"][:3].tolist() == [1, 1, 1] and np.allclose(hit["box_iou"][:3], 1)
    assert miss["hit_rate"][:3].tolist() == [0, 0, 0] and miss["box_iou"][:3].tolist() == [0, 0, 0]
    assert math.isnan(hit["box_iou"][3]) and math.isnan(hit["hit_rate"][3])   # no lesion, no box to find


def test_per_image_means_are_the_registered_metrics():
    rng = np.random.default_rng(0)
    m, p = masks(), rng.random((4, 16, 16))
    per = per_image_metrics("segmentation", m, p)
    assert per["dice"].mean() == pytest.approx(METRICS.get("dice")(m, p))
    assert per["iou"].mean() == pytest.approx(METRICS.get("iou")(m, p))
    b = boxes()
    q = np.clip(b + rng.normal(0, 0.1, b.shape), 0, 1)
    per = per_image_metrics("detection", b, q)
    assert np.nanmean(per["box_iou"]) == pytest.approx(METRICS.get("box_iou")(b, q))
    assert np.nanmean(per["hit_rate"]) == pytest.approx(METRICS.get("hit_rate")(b, q))


def dense_frame(values: dict[str, list], arm: str = "a") -> pd.DataFrame:
    n = len(next(iter(values.values())))
    return pd.DataFrame({"arm": arm, "seed": 0, "task": "seg", "split": "test", "id": [str(i) for i in range(n)],
                         "group": [str(i // 2) for i in range(n)], "lesion": 1, **values})


def test_dense_metrics_have_bootstrap_cis_around_the_mean():
    rng = np.random.default_rng(1)
    dice = rng.random(40)
    doc = dense_metrics_of(dense_frame({"dice": dice, "iou": dice / 2}), n_boot=300)["a"]["0"]["seg"]["test"]
    assert doc["dice"] == pytest.approx(dice.mean())
    assert doc["dice_ci_low"] < doc["dice"] < doc["dice_ci_high"]
    assert doc["dice_ci_high"] - doc["dice_ci_low"] < 0.4
    perfect = dense_metrics_of(dense_frame({"dice": np.ones(10)}), n_boot=100)["a"]["0"]["seg"]["test"]
    assert perfect == {"dice": 1.0, "dice_ci_low": 1.0, "dice_ci_high": 1.0}
    empty = dense_metrics_of(dense_frame({"dice": np.zeros(10)}), n_boot=100)["a"]["0"]["seg"]["test"]
    assert empty == {"dice": 0.0, "dice_ci_low": 0.0, "dice_ci_high": 0.0}


def test_detection_metrics_skip_images_without_a_lesion():
    frame = dense_frame({"box_iou": [0.8, np.nan, 0.6, np.nan], "hit_rate": [1, np.nan, 1, np.nan]})
    doc = dense_metrics_of(frame.assign(task="det"), n_boot=50)["a"]["0"]["det"]["test"]
    assert doc["box_iou"] == pytest.approx(0.7) and doc["hit_rate"] == 1.0


# -- the shipped config, reduced ------------------------------------------------------------------
def test_s4_reduced_end_to_end(tmp_path, shared_cache, monkeypatch):
    import os

    from medmtl.api import run as run_experiment
    from medmtl.config import load_config, parse_config, set_dotted
    from tests.conftest import DATA

    need_data("busi")
    monkeypatch.setenv("MEDMTL_DATA", os.environ.get("MEDMTL_DATA", str(DATA)))
    cfg = load_config(REPO / "experiments" / "s4-cls-det-seg.yaml")
    assert [a.name for a in cfg.experiment.arms] == ["parallel", "feature_transfer", "stl_cls", "stl_seg", "stl_det"]
    raw = cfg.model_dump(mode="json")
    tiny = {**cfg.profiles["quick"], "cache_dir": str(shared_cache), "run_dir": str(tmp_path / "s4"), "profiles": {},
            "data.size": 64, "data.batch_size": 16, "data.limit_train": 400,
            "data.limit_eval": 16, "train.epochs": 3, "train.steps_per_epoch": 20, "train.mlflow": False}
    for key, value in tiny.items():
        set_dotted(raw, key, value)
    run = run_experiment(parse_config(raw, "reduced s4"), progress=False)

    metrics = json.loads((run / "results" / "metrics.json").read_text())
    expected = {"busi_cls": ["auc"], "busi_seg": ["dice", "iou"], "busi_det": ["box_iou", "hit_rate"]}
    trained = {"parallel": list(expected), "feature_transfer": list(expected), "stl_cls": ["busi_cls"],
               "stl_seg": ["busi_seg"], "stl_det": ["busi_det"]}
    for arm, tasks in trained.items():
        assert sorted(metrics[arm]["0"]) == sorted(tasks), arm
        for task in tasks:
            test = metrics[arm]["0"][task]["test"]
            for m in expected[task]:
                assert 0 <= test[m] <= 1, (arm, task, m)
                if task != "busi_cls":
                    assert test[f"{m}_ci_low"] <= test[m] <= test[f"{m}_ci_high"], (arm, task, m)
    pred = pd.read_csv(run / "results" / "predictions.csv", dtype={"id": str, "group": str})
    for arm in ("parallel", "feature_transfer", "stl_cls"):
        assert_beats_chance(pred, arm, "busi_cls", "malignant")
    dense = pd.read_csv(run / "results" / "predictions_dense.csv")
    assert set(dense.groupby("task")["arm"].unique().map(frozenset)) == \
        {frozenset({"parallel", "feature_transfer", "stl_seg"}), frozenset({"parallel", "feature_transfer", "stl_det"})}
    assert dense[dense.split == "test"].groupby(["arm", "task"]).size().nunique() == 1   # the whole test split

    rows = json.loads((run / "report" / "results.json").read_text())["rows"]
    cells = {(r["arm"], r["task"]): r["metrics"] for r in rows}
    assert cells[("stl_seg", "busi_seg")]["dice"]["ci_high"] >= cells[("stl_seg", "busi_seg")]["dice"]["ci_low"]
    assert "hit_rate" in cells[("feature_transfer", "busi_det")]
    assert "dice_ci_low" not in cells[("parallel", "busi_seg")]          # bounds are not shown as metrics
    assert "busi_seg" in (run / "report" / "results.md").read_text()
