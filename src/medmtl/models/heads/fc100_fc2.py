"""Samala et al.'s two added fully connected layers: fc100 then the class layer."""
from __future__ import annotations

import torch
from torch import nn

from medmtl.models.heads._base import HEADS, Features, Head
from medmtl.models.heads._common import CLASSIFICATION_KINDS, check_head_tasks


@HEADS.register("fc100_fc2", task_types=CLASSIFICATION_KINDS, needs_pyramid=False, multi_task=False)
class Fc100Fc2Head(Head):
    """FC(100) - ReLU - FC(num_classes) per task.

    Samala et al. (Phys. Med. Biol. 2017) add "two fully connected layers (fc100 and fc2)" to the
    ImageNet DCNN "to drop down the 1000-node fully connected layer to a 2-node softmax
    classifier"; the last layer here has ``num_classes`` nodes (2 in the paper). The paper uses
    dropout without saying where, so it is off by default (``drop_rate`` before the last layer).

    Task types: binary, multiclass, ordinal, multilabel. Output: logits (B, num_classes) per task.

    Args:
        tasks: the task specs.
        in_features: pooled trunk feature size.
        feature_info: unused.
        hidden_features: width of the first layer (100 in the paper).
        drop_rate: dropout probability before the last layer.
    """

    def __init__(self, tasks, in_features: int, feature_info: list[dict], hidden_features: int = 100,
                 drop_rate: float = 0.0):
        super().__init__(tasks, in_features, feature_info)
        self.hidden_features = hidden_features
        self.drop_rate = drop_rate
        tasks = check_head_tasks("fc100_fc2", tasks)
        self.mlp = nn.ModuleDict({
            t.name: nn.Sequential(nn.Linear(in_features, hidden_features), nn.ReLU(), nn.Dropout(drop_rate),
                                  nn.Linear(hidden_features, t.num_classes))
            for t in tasks})

    def forward(self, feats: Features) -> dict[str, torch.Tensor]:
        return {name: mlp(feats.pooled) for name, mlp in self.mlp.items()}
