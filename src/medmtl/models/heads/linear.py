"""One fully connected layer per task on the pooled trunk features."""
from __future__ import annotations

import torch
from torch import nn

from medmtl.models.heads._base import HEADS, Features, Head
from medmtl.models.heads._common import CLASSIFICATION_KINDS, check_head_tasks


@HEADS.register("linear", task_types=CLASSIFICATION_KINDS, needs_pyramid=False, multi_task=False)
class LinearHead(Head):
    """Dropout then one linear classifier per task.

    The task-specific last layer of hard-parameter-sharing MTL: the FC0/FC1/FC2 heads of
    Obonyo & Ruiru (IJCCI 2019) on a shared ResNeXt, and the per-task linear classifiers of
    Mormont et al. (IEEE JBHI 2020). Several tasks may share one ``LinearHead``; their classifiers
    stay independent.

    Task types: binary, multiclass, ordinal, multilabel. Output: logits (B, num_classes) per task.

    Args:
        tasks: the task specs.
        in_features: pooled trunk feature size.
        feature_info: unused (the head reads pooled features only).
        drop_rate: dropout probability before each classifier.
    """

    def __init__(self, tasks, in_features: int, feature_info: list[dict], drop_rate: float = 0.0):
        super().__init__(tasks, in_features, feature_info)
        self.drop_rate = drop_rate
        tasks = check_head_tasks("linear", tasks)
        self.fc = nn.ModuleDict({t.name: nn.Sequential(nn.Dropout(drop_rate), nn.Linear(in_features, t.num_classes))
                                 for t in tasks})

    def forward(self, feats: Features) -> dict[str, torch.Tensor]:
        return {name: fc(feats.pooled) for name, fc in self.fc.items()}
