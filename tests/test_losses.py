"""Per-task, per-sample losses: the reference formulas on labelled rows, nothing from missing labels."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmtl.data.pipeline import TaskSpec
from medmtl.mtl.losses import LOSSES, compute_losses, task_loss


def spec(name: str, kind: str, n: int = 2) -> TaskSpec:
    classes = tuple(f"c{i}" for i in range(n)) if kind not in ("segmentation", "detection") else ()
    return TaskSpec(name=name, kind=kind, classes=classes, target=name, source="src")


def all_true(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


def test_registry_has_one_loss_per_task_kind():
    assert LOSSES.list() == ["binary", "detection", "multiclass", "multilabel", "ordinal", "segmentation"]
    with pytest.raises(KeyError, match=r"'regression' is not a registered loss; choose one of \['binary'"):
        task_loss(spec("r", "regression"), torch.zeros(2, 1), torch.zeros(2), all_true(2))


@pytest.mark.parametrize("kind", ["binary", "multiclass", "ordinal"])
def test_cross_entropy_on_labelled_rows_only(kind):
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    target = torch.tensor([0, 3, -1, 2, 1, 1])
    rows_mask = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)    # row 2 missing (-1), row 4 masked
    loss = task_loss(spec("t", kind, 4), logits, target, rows_mask)
    keep = torch.tensor([0, 1, 3, 5])
    assert torch.allclose(loss, F.cross_entropy(logits[keep], target[keep], reduction="none"))


def test_missing_labels_give_an_empty_loss():
    loss = task_loss(spec("t", "binary"), torch.randn(3, 2), torch.full((3,), -1), all_true(3))
    assert loss.shape == (0,)


def test_multilabel_is_bce_with_logits_averaged_over_classes():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 5), (torch.rand(4, 5) > 0.5).float()
    rows_mask = torch.tensor([1, 0, 1, 1], dtype=torch.bool)
    loss = task_loss(spec("m", "multilabel", 5), logits, target, rows_mask)
    ref = F.binary_cross_entropy_with_logits(logits[rows_mask], target[rows_mask], reduction="none").mean(1)
    assert loss.shape == (3,) and torch.allclose(loss, ref)


def square_mask(shift: int = 0) -> torch.Tensor:
    m = torch.zeros(32, 32, dtype=torch.long)
    m[8 + shift:20 + shift, 8 + shift:20 + shift] = 1
    return m


def perfect_logits(mask: torch.Tensor) -> torch.Tensor:
    return (mask.float() * 2 - 1)[None] * 30.0


def test_dice_bce_is_zero_for_a_perfect_mask_and_grows_with_a_shift():
    target = torch.stack([square_mask(), torch.zeros(32, 32, dtype=torch.long)])   # a lesion and an empty mask
    output = torch.stack([perfect_logits(target[0]), perfect_logits(target[1])])
    loss = task_loss(spec("s", "segmentation"), output, target, all_true(2))
    assert loss.shape == (2,) and torch.allclose(loss, torch.zeros(2), atol=1e-6)
    shifted = torch.stack([perfect_logits(square_mask(6)), perfect_logits(square_mask())])
    worse = task_loss(spec("s", "segmentation"), shifted, target, all_true(2))
    assert (worse > 0.5).all()           # overlap 6x6 of 12x12: Dice loss 0.75; a false lesion: Dice loss ~1


def detection_target(boxes, objectness):
    return {"box": torch.tensor(boxes, dtype=torch.float32), "objectness": torch.tensor(objectness)}


def test_box_loss_is_zero_for_a_perfect_box_in_pixels():
    target = detection_target([[16.0, 8.0, 48.0, 32.0]], [1.0])            # pixels of a 64 x 64 input
    output = torch.tensor([[0.25, 0.125, 0.75, 0.5, 30.0]])
    loss = task_loss(spec("d", "detection"), output, target, all_true(1), image_size=(64, 64))
    assert loss.shape == (1,) and loss.item() < 1e-6
    off = torch.tensor([[0.0, 0.0, 0.5, 0.5, 30.0]])
    assert task_loss(spec("d", "detection"), off, target, all_true(1), image_size=(64, 64)).item() > 0.3


def test_box_coordinates_are_ignored_without_a_lesion():
    target = detection_target([[0.0, 0.0, 0.0, 0.0], [10.0, 10.0, 20.0, 20.0]], [0.0, 0.0])
    a = torch.tensor([[0.1, 0.1, 0.2, 0.2, -3.0], [0.0, 0.0, 0.9, 0.9, 1.0]])
    b = torch.tensor([[0.5, 0.5, 0.9, 0.9, -3.0], [0.3, 0.3, 0.4, 0.4, 1.0]])
    la = task_loss(spec("d", "detection"), a, target, all_true(2), image_size=(32, 32))
    lb = task_loss(spec("d", "detection"), b, target, all_true(2), image_size=(32, 32))
    assert torch.allclose(la, lb)
    assert torch.allclose(la, F.binary_cross_entropy_with_logits(a[:, 4], torch.zeros(2), reduction="none"))


def test_box_loss_needs_the_image_size():
    with pytest.raises(ValueError, match=r"needs image_size=\(H, W\)"):
        task_loss(spec("d", "detection"), torch.zeros(1, 5), detection_target([[0, 0, 1, 1]], [1.0]), all_true(1))


def test_compute_losses_aligns_routed_rows_with_the_batch():
    torch.manual_seed(0)
    specs = [spec("a", "multiclass", 3), spec("seg", "segmentation")]
    batch = {
        "image": torch.zeros(5, 3, 32, 32),
        "labels": {"a": torch.tensor([2, -1, 0, 1, -1]), "seg": torch.stack([square_mask()] * 5)},
        "label_mask": {"a": torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool),
                       "seg": torch.tensor([0, 1, 0, 0, 1], dtype=torch.bool)},
    }
    rows_a = torch.tensor([0, 2, 3])
    logits = torch.randn(3, 3)
    seg_rows = torch.tensor([1, 4])
    seg_out = torch.stack([perfect_logits(square_mask())] * 2)
    losses = compute_losses(specs, {"a": (logits, rows_a), "seg": (seg_out, seg_rows)}, batch)
    assert torch.allclose(losses["a"], F.cross_entropy(logits, torch.tensor([2, 0, 1]), reduction="none"))
    assert losses["seg"].shape == (2,) and losses["seg"].max() < 1e-6


def test_compute_losses_leaves_out_tasks_without_labelled_rows():
    specs = {"a": spec("a", "binary")}
    batch = {"image": torch.zeros(2, 3, 8, 8), "labels": {"a": torch.tensor([-1, -1])},
             "label_mask": {"a": torch.tensor([False, False])}}
    assert compute_losses(specs, {"a": (torch.randn(2, 2), torch.tensor([0, 1]))}, batch) == {}
