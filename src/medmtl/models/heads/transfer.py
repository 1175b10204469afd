"""The transfer-learning head of Obonyo & Ruiru: FC, ReLU, Dropout, BatchNorm, FC."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.models.heads._base import HEADS, Features, Head
from medmtl.models.heads._common import CLASSIFICATION_KINDS, check_head_tasks


class _BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that uses its running statistics for a one-row training batch.

    Routing can hand a head a single labelled row; plain BatchNorm1d raises on that in training
    mode (the batch variance is undefined), so that row is normalised as in evaluation instead.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


@HEADS.register("transfer", task_types=CLASSIFICATION_KINDS, needs_pyramid=False, multi_task=False)
class TransferHead(Head):
    """FC(hidden) - ReLU - Dropout - BatchNorm - FC(num_classes) per task.

    Obonyo & Ruiru (IJCCI 2019), TL-based model: the skin-cancer-trained base is fine-tuned on
    IDC "by adding two FC's, RELU, Dropout and Batch Norm", in that order. The paper gives no
    hidden size; 256 is a plausible default for a ResNeXt-29 feature vector.

    Task types: binary, multiclass, ordinal, multilabel. Output: logits (B, num_classes) per task.

    Args:
        tasks: the task specs.
        in_features: pooled trunk feature size.
        feature_info: unused.
        hidden_features: width of the first FC layer.
        drop_rate: dropout probability after the ReLU.
    """

    def __init__(self, tasks, in_features: int, feature_info: list[dict], hidden_features: int = 256,
                 drop_rate: float = 0.5):
        super().__init__(tasks, in_features, feature_info)
        self.hidden_features = hidden_features
        self.drop_rate = drop_rate
        tasks = check_head_tasks("transfer", tasks)
        self.mlp = nn.ModuleDict({t.name: self._mlp(in_features, t.num_classes) for t in tasks})

    def _mlp(self, in_features: int, num_classes: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(in_features, self.hidden_features), nn.ReLU(), nn.Dropout(self.drop_rate),
                             _BatchNorm1d(self.hidden_features), nn.Linear(self.hidden_features, num_classes))

    def forward(self, feats: Features) -> dict[str, torch.Tensor]:
        return {name: mlp(feats.pooled) for name, mlp in self.mlp.items()}
