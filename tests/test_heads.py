"""Conformance of every registered head: output format per task kind and a gradient for every parameter."""
from __future__ import annotations

import pytest
import timm
import torch

from medmtl.data.pipeline import TaskSpec
from medmtl.models.heads import HEADS, Features, HeadInfo, to_probabilities
from medmtl.models.trunks import TRUNKS

EXPECTED_HEADS = {"aux_conditioned", "box", "fc100_fc2", "feature_transfer", "linear", "segmentation", "transfer"}


def spec(name: str, kind: str, n: int = 2, role: str = "main") -> TaskSpec:
    classes = tuple(f"c{i}" for i in range(n)) if kind not in ("segmentation", "detection") else ()
    return TaskSpec(name=name, kind=kind, classes=classes, target=name, source="src", role=role)


def tasks_for(head: str) -> list[TaskSpec]:
    """Tasks covering every kind the head declares (aux_conditioned: one main, the rest auxiliary)."""
    kinds = sorted(HEADS.meta(head).task_types)
    n = {"binary": 2, "multiclass": 3, "ordinal": 4, "multilabel": 5}
    if HEADS.meta(head).multi_task:
        return [spec("main", "multiclass", 3)] + [spec(f"aux_{k}", k, n.get(k, 0), role="auxiliary") for k in kinds]
    return [spec(f"t_{k}", k, n.get(k, 0)) for k in kinds]


def tiny():
    torch.manual_seed(0)
    return TRUNKS.get("test_tiny")()


def features(trunk, x: torch.Tensor) -> Features:
    pyramid = trunk.forward_pyramid(x)
    return Features(pyramid[-1].mean(dim=(2, 3)), pyramid, tuple(x.shape[-2:]))


def check_output(task: TaskSpec, out: torch.Tensor, b: int, size: int) -> None:
    if task.kind == "segmentation":
        assert out.shape == (b, 1, size, size)
    elif task.kind == "detection":
        assert out.shape == (b, 5)
        box = out[:, :4]
        assert (box >= 0).all() and (box <= 1).all()
        assert (box[:, 2] >= box[:, 0]).all() and (box[:, 3] >= box[:, 1]).all()
    else:
        assert out.shape == (b, task.num_classes)
    assert torch.isfinite(out).all()


def test_registry_is_pinned_and_declares_its_flags():
    assert HEADS.list(), "no head registered"
    assert set(HEADS.list()) == EXPECTED_HEADS
    for name in HEADS.list():
        meta = HEADS.meta(name)
        assert isinstance(meta, HeadInfo)
        assert HEADS.get(name).needs_pyramid == meta.needs_pyramid   # the model reads the class flag


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", HEADS.list())
def test_head_outputs_and_gradients(name, size):
    trunk = tiny()
    tasks = tasks_for(name)
    head = HEADS.get(name)(tasks, trunk.num_features, trunk.feature_info)
    x = torch.randn(3, 3, size, size)
    out = head(features(trunk, x))
    assert set(out) == {t.name for t in tasks}
    for t in tasks:
        check_output(t, out[t.name], 3, size)
    sum(o.sum() for o in out.values()).backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", [n for n in HEADS.list() if HEADS.meta(n).needs_pyramid])
def test_dense_heads_on_a_resnet18_pyramid(name):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, features_only=True)
    info = net.feature_info.get_dicts()
    tasks = tasks_for(name)
    head = HEADS.get(name)(tasks, info[-1]["num_chs"], info)
    x = torch.randn(2, 3, 64, 64)
    pyramid = net(x)
    out = head(Features(pyramid[-1].mean(dim=(2, 3)), pyramid, (64, 64)))
    for t in tasks:
        check_output(t, out[t.name], 2, 64)
    sum(o.sum() for o in out.values()).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_segmentation_logits_follow_a_non_square_input():
    trunk = tiny()
    head = HEADS.get("segmentation")([spec("seg", "segmentation")], trunk.num_features, trunk.feature_info)
    x = torch.randn(2, 3, 40, 56)
    assert head(features(trunk, x))["seg"].shape == (2, 1, 40, 56)


def test_segmentation_refuses_decoder_channels_of_the_wrong_length():
    trunk = tiny()
    with pytest.raises(ValueError, match=r"decoder_channels=\(8, 8\) needs one entry per skip stage \(1 for"):
        HEADS.get("segmentation")([spec("seg", "segmentation")], 16, trunk.feature_info, decoder_channels=(8, 8))


@pytest.mark.parametrize("name", HEADS.list())
def test_head_refuses_a_task_kind_it_does_not_serve(name):
    wrong = next(k for k in ("segmentation", "binary", "multilabel") if k not in HEADS.meta(name).task_types)
    tasks = [spec("bad", wrong)]
    with pytest.raises(ValueError, match=rf"task 'bad' has kind '{wrong}', which head '{name}' does not support"):
        HEADS.get(name)(tasks, 16, tiny().feature_info)


def test_transfer_head_handles_a_single_routed_row_in_training():
    head = HEADS.get("transfer")([spec("a", "binary")], 16, [])
    head.train()
    out = head(Features(torch.randn(1, 16), None, (32, 32)))["a"]
    assert out.shape == (1, 2) and torch.isfinite(out).all()


# -- aux_conditioned -----------------------------------------------------------------------------
def aux_tasks() -> list[TaskSpec]:
    return [spec("sev", "multiclass", 3), spec("tissue", "multiclass", 3, role="auxiliary"),
            spec("abn", "multiclass", 7, role="auxiliary")]


def test_aux_predictions_feed_the_main_classifier():
    torch.manual_seed(0)
    head = HEADS.get("aux_conditioned")(aux_tasks(), 16, []).eval()
    feats = Features(torch.randn(4, 16), None, (32, 32))
    before = head(feats)
    with torch.no_grad():
        head.aux["tissue"].weight.add_(torch.randn_like(head.aux["tissue"].weight))
    after = head(feats)
    assert not torch.allclose(before["sev"], after["sev"])          # main logits moved
    assert torch.allclose(before["abn"], after["abn"])              # the other auxiliary did not
    assert head.main.in_features == head.fc2_features + 3 + 7       # FC2 + one probability per aux class


@pytest.mark.parametrize("detach, reaches", [(False, True), (True, False)])
def test_detach_aux_stops_the_main_gradient_at_the_aux_classifiers(detach, reaches):
    head = HEADS.get("aux_conditioned")(aux_tasks(), 16, [], detach_aux=detach)
    head(Features(torch.randn(4, 16), None, (32, 32)))["sev"].sum().backward()
    assert (head.aux["tissue"].weight.grad is not None) == reaches
    assert head.fc2[0].weight.grad is not None


@pytest.mark.parametrize("roles, n", [(("auxiliary", "auxiliary", "auxiliary"), 0), (("main", "main", "auxiliary"), 2)])
def test_aux_conditioned_needs_exactly_one_main_task(roles, n):
    tasks = [spec(f"t{i}", "binary", role=r) for i, r in enumerate(roles)]
    with pytest.raises(ValueError, match=rf"exactly one task with role 'main'; got {n}"):
        HEADS.get("aux_conditioned")(tasks, 16, [])


def test_aux_conditioned_needs_an_auxiliary_task():
    with pytest.raises(ValueError, match="needs at least one auxiliary task besides 'm'"):
        HEADS.get("aux_conditioned")([spec("m", "binary")], 16, [])


def test_probabilities_per_kind():
    logits = torch.randn(4, 3)
    assert torch.allclose(to_probabilities("multiclass", logits).sum(1), torch.ones(4))
    det = to_probabilities("detection", torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0]]))
    assert torch.allclose(det, torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]]))
    with pytest.raises(ValueError, match="task kind 'regression' has no probability form"):
        to_probabilities("regression", logits)


@pytest.mark.parametrize("src, dst", [((7, 9), (28, 28)), ((28, 28), (13, 7)), ((4, 4), (4, 4)), ((1, 5), (3, 10))])
def test_matmul_bilinear_resize_equals_torchs_values_and_gradients(src, dst):
    """The deterministic-GPU form of bilinear resizing (two matrix products) against torch's kernel."""
    from medmtl.models.heads._ops import resize_bilinear

    x = torch.randn(2, 3, *src, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, *dst, dtype=torch.float64)
    ref = torch.nn.functional.interpolate(x, size=dst, mode="bilinear", align_corners=False)
    (grad_ref,) = torch.autograd.grad((ref * g).sum(), x)
    out = resize_bilinear(x, dst, matmul=True)
    (grad,) = torch.autograd.grad((out * g).sum(), x)
    assert torch.allclose(out, ref, atol=1e-10) and torch.allclose(grad, grad_ref, atol=1e-10)


@pytest.mark.parametrize("side, size", [(8, 4), (7, 4), (5, 4), (3, 4), (13, 1)])
def test_matmul_adaptive_pool_equals_torchs_values_and_gradients(side, size):
    from medmtl.models.heads._ops import AdaptiveAvgPool, adaptive_avg_pool

    x = torch.randn(2, 3, side, side + 1, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.adaptive_avg_pool2d(x, size)
    g = torch.randn_like(ref)
    (grad_ref,) = torch.autograd.grad((ref * g).sum(), x)
    out = adaptive_avg_pool(x, size, matmul=True)
    (grad,) = torch.autograd.grad((out * g).sum(), x)
    assert torch.allclose(out, ref, atol=1e-10) and torch.allclose(grad, grad_ref, atol=1e-10)
    assert torch.equal(AdaptiveAvgPool(size)(x), ref)        # on the CPU: torch's own kernel
