"""The head contract: a head turns trunk features into the outputs of one or more tasks.

Most heads serve one task; some serve several at once because their tasks feed each other (the
auxiliary-conditioned head of Fang et al. 2019 concatenates auxiliary predictions into the main
classifier). Every head returns ``{task_name: output}``.

Outputs per task kind:
    binary / multiclass / ordinal: logits (B, num_classes)
    multilabel: logits (B, num_classes)
    segmentation: logits (B, 1, H, W) at the input image's resolution
    detection: (B, 5): box x0, y0, x1, y1 as fractions of the image side, then an objectness logit
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medmtl._registry import Registry


@dataclass(frozen=True)
class HeadInfo:
    """``task_types``: the task kinds it serves; ``needs_pyramid``: it reads the trunk's multi-scale
    features (a decoder), not only the pooled vector; ``multi_task``: one head for several tasks."""

    task_types: frozenset
    needs_pyramid: bool
    multi_task: bool


HEADS: Registry = Registry("head", HeadInfo)


@dataclass
class Features:
    """What the trunk hands to the heads for one batch (rows already routed to the head)."""

    pooled: torch.Tensor                   # (B, C)
    pyramid: list[torch.Tensor] | None     # one map per trunk stage, or None for heads that do not need it
    image_size: tuple[int, int]            # (H, W) of the input

    def select(self, rows: torch.Tensor) -> "Features":
        return Features(self.pooled[rows], None if self.pyramid is None else [p[rows] for p in self.pyramid],
                        self.image_size)


class Head(nn.Module):
    """Base class. Constructor: ``Head(tasks, in_features, feature_info, **hyper_parameters)``.

    Args:
        tasks: the task specs (``name``, ``kind``, ``num_classes``, ``role``) this head predicts.
        in_features: the trunk's pooled feature size.
        feature_info: the trunk's per-stage ``{"num_chs", "reduction"}`` list (dense heads).
    """

    needs_pyramid: bool = False

    def __init__(self, tasks, in_features: int, feature_info: list[dict]):
        super().__init__()
        self.task_names = [t.name for t in tasks]

    def forward(self, feats: Features) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
