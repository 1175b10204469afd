"""One box and an objectness score per image (one lesion per image)."""
from __future__ import annotations

import torch
from torch import nn

from medmtl.models.heads._base import HEADS, Features, Head
from medmtl.models.heads._common import check_head_tasks
from medmtl.models.heads._ops import AdaptiveAvgPool


def box_output(raw: torch.Tensor) -> torch.Tensor:
    """(B, 5) raw numbers -> ordered box fractions x0, y0, x1, y1 and the objectness logit.

    Sorting each coordinate pair (rather than predicting x0 and a width) keeps every output a
    valid box whatever the weights, which GIoU needs, and leaves both corners free to move.
    """
    s = raw[:, :4].sigmoid()
    x = torch.stack([s[:, 0], s[:, 2]], dim=1)
    y = torch.stack([s[:, 1], s[:, 3]], dim=1)
    return torch.stack([x.amin(1), y.amin(1), x.amax(1), y.amax(1), raw[:, 4]], dim=1)


@HEADS.register("box", task_types=frozenset({"detection"}), needs_pyramid=True, multi_task=False)
class BoxHead(Head):
    """Regress one lesion box per image from the last trunk map.

    The detection branch of FTMTLNet (Gao et al.) reduced to medmtl's setting, one lesion per
    image (BUSI, mini-MIAS): an MLP on the last feature map, average-pooled to a
    ``pool_size`` x ``pool_size`` grid so that where the lesion lies survives (a global average
    would discard it), outputs 4 box numbers and an objectness logit.

    Task types: detection, 2-D. Output: (B, 5): x0, y0, x1, y1 as fractions of the image side
    (x0 <= x1, y0 <= y1), then the objectness logit.

    Args:
        tasks: detection task specs (one MLP each).
        in_features: unused (the head reads the last map, whose channels come from feature_info).
        feature_info: the trunk's per-stage ``{"num_chs", "reduction"}``.
        hidden_features: MLP width.
        pool_size: side of the pooled grid.
        drop_rate: dropout before the last layer.
    """

    needs_pyramid = True

    def __init__(self, tasks, in_features: int, feature_info: list[dict], hidden_features: int = 256,
                 pool_size: int = 4, drop_rate: float = 0.0):
        super().__init__(tasks, in_features, feature_info)
        self.hidden_features = hidden_features
        self.pool_size = pool_size
        self.drop_rate = drop_rate
        tasks = check_head_tasks("box", tasks)
        chs = feature_info[-1]["num_chs"]
        self.mlp = nn.ModuleDict({
            t.name: nn.Sequential(AdaptiveAvgPool(pool_size), nn.Flatten(),
                                  nn.Linear(chs * pool_size * pool_size, hidden_features), nn.ReLU(),
                                  nn.Dropout(drop_rate), nn.Linear(hidden_features, 5))
            for t in tasks})

    def forward(self, feats: Features) -> dict[str, torch.Tensor]:
        if feats.pyramid is None:
            raise ValueError("the box head needs the trunk's last feature map; got Features.pyramid=None")
        return {name: box_output(mlp(feats.pyramid[-1])) for name, mlp in self.mlp.items()}
