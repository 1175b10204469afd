"""Per-task, per-sample losses over the rows a head was routed.

Losses stay per sample (never averaged here) so that the weighting strategies in
``medmtl.mtl.weightings`` and the engine decide how to reduce them (mean per task, per-sample
weights, uncertainty weighting...). Only labelled rows produce a loss: a missing label is
masked, never imputed as a class.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss

from medmtl._registry import Registry
from medmtl.kinds import SINGLE_LABEL_KINDS

LOSSES: Registry = Registry("loss")

DICE_SMOOTH = 1.0  # makes an empty prediction on an empty mask a perfect (zero) Dice loss


@LOSSES.register("binary")
@LOSSES.register("multiclass")
@LOSSES.register("ordinal")
def cross_entropy_loss(output: torch.Tensor, target: torch.Tensor, **_: object) -> torch.Tensor:
    """Softmax cross-entropy per sample; ``output`` (n, C) logits, ``target`` (n,) class indices.

    Binary tasks have two logits (the heads emit ``num_classes`` outputs for every kind), so
    they use the same cross-entropy; ordinal tasks are trained as multiclass, as in the papers.
    """
    return F.cross_entropy(output, target.long(), reduction="none")


@LOSSES.register("multilabel")
def multilabel_loss(output: torch.Tensor, target: torch.Tensor, **_: object) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the classes: (n, C) -> (n,)."""
    return F.binary_cross_entropy_with_logits(output, target.float(), reduction="none").mean(dim=1)


@LOSSES.register("segmentation")
def dice_bce_loss(output: torch.Tensor, target: torch.Tensor, **_: object) -> torch.Tensor:
    """Soft Dice on the sigmoid plus pixel-mean BCE, per sample.

    ``output`` (n, 1, H, W) logits, ``target`` (n, H, W) {0, 1}. Dice is computed per image with
    a smoothing term of 1 in numerator and denominator, so an image without lesion (normal BUSI
    scans) costs ~0 when the prediction is empty, instead of 0/0; BCE keeps a pixel-level
    gradient where Dice saturates.
    """
    # float32: under autocast a float16 sum over a 256 x 256 mask can overflow (max 65504)
    logits = output.float().flatten(1)
    if target.shape[-2:] != output.shape[-2:]:
        raise ValueError(f"segmentation target {tuple(target.shape)} and output {tuple(output.shape)} "
                         "differ in size; the head must upsample to the input size")
    t = target.flatten(1).float()
    p = logits.sigmoid()
    dice = 1 - (2 * (p * t).sum(1) + DICE_SMOOTH) / (p.sum(1) + t.sum(1) + DICE_SMOOTH)
    return dice + F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean(1)


@LOSSES.register("detection")
def box_loss(output: torch.Tensor, target: Mapping[str, torch.Tensor], *,
             image_size: tuple[int, int] | None = None, **_: object) -> torch.Tensor:
    """Objectness BCE for every row plus L1 + GIoU on the box where a lesion is present.

    ``output`` (n, 5): box fractions x0, y0, x1, y1 and an objectness logit (the ``box`` head).
    ``target``: ``{"box": (n, 4) pixels in the network input frame, "objectness": (n,)}``.
    Pixel boxes are divided by ``image_size`` (H, W) so both terms compare fractions. The box
    terms apply only where objectness is 1 and the target box has an area: an image without a
    lesion has no box to regress, and an augmentation that crops the lesion out leaves a
    zero-area row (``medmtl.data.transforms``) that GIoU cannot score.

    Raises:
        ValueError: ``image_size`` missing.
    """
    if image_size is None:
        raise ValueError("the detection loss needs image_size=(H, W) to turn pixel boxes into fractions")
    h, w = image_size
    output = output.float()     # GIoU's areas and divisions are fragile in float16 under autocast
    scale = output.new_tensor([w, h, w, h])
    box = target["box"].to(output.dtype) / scale
    objectness = target["objectness"].to(output.dtype)
    loss = F.binary_cross_entropy_with_logits(output[:, 4], objectness, reduction="none")
    has_box = (objectness > 0.5) & (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
    if has_box.any():
        pred, true = output[has_box, :4], box[has_box]
        regression = (pred - true).abs().mean(dim=1) + generalized_box_iou_loss(pred, true, reduction="none")
        loss = loss.index_add(0, has_box.nonzero().flatten(), regression)
    return loss


def _labelled(spec, target, rows_mask: torch.Tensor) -> torch.Tensor:
    """Rows with a label: the mask, and for class indices also a non-negative label (-1 = missing)."""
    keep = rows_mask.bool()
    if spec.kind in SINGLE_LABEL_KINDS:
        keep = keep & (target >= 0)
    return keep


def _take(target, keep: torch.Tensor):
    if isinstance(target, Mapping):
        return {k: v[keep] for k, v in target.items()}
    return target[keep]


def task_loss(spec, output: torch.Tensor, target, rows_mask: torch.Tensor, *,
              image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-sample losses of one task over its labelled rows.

    Args:
        spec: the task spec (``kind`` picks the loss from ``LOSSES``).
        output: the head's output for the routed rows (first dimension n).
        target: the labels for the same rows: a tensor, or ``{"box", "objectness"}`` for detection.
        rows_mask: bool (n,), which of these rows carry a label for this task.
        image_size: (H, W) of the network input; required for detection.

    Returns:
        (m,) losses of the labelled rows (``rows_mask`` true and, for class indices, label >= 0),
        in row order; empty when none is labelled.

    Raises:
        KeyError: a task kind without a registered loss.
    """
    fn = LOSSES.get(spec.kind)
    target = ({k: v.to(output.device) for k, v in target.items()} if isinstance(target, Mapping)
              else target.to(output.device))
    keep = _labelled(spec, target, rows_mask.to(output.device))
    return fn(output[keep], _take(target, keep), image_size=image_size)


def compute_losses(specs, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                   batch: Mapping) -> dict[str, torch.Tensor]:
    """Per-task per-sample losses for a model's routed outputs and a collated batch.

    Args:
        specs: ``{task: TaskSpec}`` or a list of specs.
        outputs: ``MultiTaskModel.forward``'s ``{task: (output, rows)}``.
        batch: ``{"image", "labels": {task: ...}, "label_mask": {task: bool (B,)}}``.

    Returns:
        ``{task: (m_task,) losses}`` for the tasks with at least one labelled routed row; a task
        without one is left out rather than given an empty tensor, whose mean would be NaN.
    """
    specs = specs if isinstance(specs, Mapping) else {s.name: s for s in specs}
    image_size = tuple(batch["image"].shape[-2:])
    losses = {}
    for task, (output, rows) in outputs.items():
        labels = batch["labels"][task]
        target = ({k: v.to(output.device)[rows] for k, v in labels.items()} if isinstance(labels, Mapping)
                  else labels.to(output.device)[rows])
        mask = batch["label_mask"][task].to(output.device)[rows]
        loss = task_loss(specs[task], output, target, mask, image_size=image_size)
        if loss.numel():
            losses[task] = loss
    return losses
