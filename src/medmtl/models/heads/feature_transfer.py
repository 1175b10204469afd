"""FTMTLNet's feature-transfer head: classification, detection and segmentation on one trunk, with
the branches' feature maps exchanged at an early stage instead of joined only in the loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.kinds import DENSE_KINDS, SINGLE_LABEL_KINDS
from medmtl.models.heads._base import HEADS, Features, Head
from medmtl.models.heads._common import check_head_tasks
from medmtl.models.heads._ops import AdaptiveAvgPool, resize_bilinear
from medmtl.models.heads.box import box_output
from medmtl.models.heads.segmentation import _UpBlock, decoder_widths


def split_by_branch(tasks: list) -> tuple[list, object, object]:
    """``(classification tasks, the segmentation task, the detection task)``.

    Raises:
        ValueError: no classification task, or not exactly one segmentation and one detection task.
    """
    cls = [t for t in tasks if t.kind in SINGLE_LABEL_KINDS]
    seg = [t for t in tasks if t.kind == "segmentation"]
    det = [t for t in tasks if t.kind == "detection"]
    if not cls or len(seg) != 1 or len(det) != 1:
        raise ValueError(f"head 'feature_transfer' needs at least one classification task and exactly one "
                         f"segmentation and one detection task; got {len(cls)} classification "
                         f"({[t.name for t in cls]}), {len(seg)} segmentation ({[t.name for t in seg]}) and "
                         f"{len(det)} detection ({[t.name for t in det]}) among {[t.name for t in tasks]}")
    return cls, seg[0], det[0]


def _conv_bn_relu(in_chs: int, out_chs: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, k, padding=k // 2, bias=False), nn.BatchNorm2d(out_chs),
                         nn.ReLU(inplace=True))


@HEADS.register("feature_transfer", task_types=SINGLE_LABEL_KINDS | DENSE_KINDS, needs_pyramid=True,
                multi_task=True)
class FeatureTransferHead(Head):
    """Classification, segmentation and detection branches that pass features to each other.

    FTMTLNet (Gao, Yoon, Wu & Chu, "A Feature Transfer Enabled Multi-Task Deep Learning Model on
    Medical Imaging", arXiv 1906.01828, Abstract): parallel multi-task models "integrate parallelly
    conducted tasks at the end of the architecture with one cost function" and so fail "to take
    advantage of the combined power of the features from each individual task at an early stage";
    FTMTLNet instead transfers the tasks' feature maps, "different views of the domain", between
    the branches. Only the abstract survives in ``shared/papers``, so the wiring below is chosen
    here (each choice has its reason):

    * Segmentation branch: the U-Net decoder of the ``segmentation`` head. Its *first* step (the
      deepest, stride 16 on a 5-stage trunk) is the "early stage" map handed to classification,
      because it is the decoder's first own feature and exists for any trunk depth.
    * Detection branch: a 3x3 conv-BN-ReLU on the last trunk map, then the ``box`` head's grid
      pool + MLP; its conv map is the detection feature handed to classification.
    * Classification branch: a 1x1 conv on the last trunk map, plus each transferred map after its
      own 1x1 conv-BN (resized to the last map's grid), summed then ReLU, global average pool,
      dropout, one linear classifier per classification task. A sum after 1x1 projections (not a
      concatenation) keeps the classifier's width independent of the branches' widths.
    * The fused classification vector gates every decoder step (after the first map has been
      handed over, so there is no cycle) with squeeze-and-excitation style channel attention
      (Hu et al. 2018): ``x_k * sigmoid(W_k v)``. Thus the classification loss trains the
      segmentation and detection branches and the segmentation loss trains the gate and the
      classification branch, which is what separates this head from parallel heads.

    Task types: binary, multiclass, ordinal (any number, one classifier each on the shared
    classification vector), one segmentation and one detection task; 2-D.
    Output: logits (B, num_classes) per classification task; segmentation logits (B, 1, H, W) at
    the input size; detection (B, 5) as the ``box`` head.

    Args:
        tasks: the classification tasks, one segmentation and one detection task.
        in_features: unused (the branches read the pyramid).
        feature_info: the trunk's per-stage ``{"num_chs", "reduction"}``, shallow to deep (>= 2 stages).
        cls_channels: width of the classification branch's fused map.
        det_channels: width of the detection branch's conv map.
        decoder_channels: decoder output channels, deep to shallow, one per skip stage; default: each
            skip stage's own channel count (as the ``segmentation`` head).
        hidden_features: width of the detection MLP.
        pool_size: side of the detection branch's pooled grid.
        drop_rate: dropout before the classifiers and the detection output layer.
        gate: gate the decoder with the classification vector (``False``: transfer one way only).

    Raises:
        ValueError: a task kind the head does not serve, the wrong number of tasks per branch, a
            trunk with fewer than 2 stages or ``decoder_channels`` of the wrong length.
    """

    needs_pyramid = True

    def __init__(self, tasks, in_features: int, feature_info: list[dict], cls_channels: int = 128,
                 det_channels: int = 128, decoder_channels: tuple[int, ...] | None = None,
                 hidden_features: int = 256, pool_size: int = 4, drop_rate: float = 0.0, gate: bool = True):
        super().__init__(tasks, in_features, feature_info)
        self.cls_channels, self.det_channels = cls_channels, det_channels
        self.decoder_channels = decoder_channels
        self.hidden_features, self.pool_size = hidden_features, pool_size
        self.drop_rate = drop_rate
        self.gate = gate
        cls_tasks, seg, det = split_by_branch(check_head_tasks("feature_transfer", tasks))
        self.seg_task, self.det_task = seg.name, det.name
        if len(feature_info) < 2:
            raise ValueError(f"head 'feature_transfer' needs a trunk with at least 2 stages (a decoder step); "
                             f"got {len(feature_info)}")
        chans = decoder_widths(feature_info, decoder_channels)
        deep = feature_info[-1]["num_chs"]
        skips = [f["num_chs"] for f in feature_info[:-1]][::-1]
        ins = (deep, *chans[:-1])
        self.up = nn.ModuleList(_UpBlock(i, s, o) for i, s, o in zip(ins, skips, chans))
        self.seg_logits = nn.Conv2d(chans[-1], 1, 1)
        self.det_conv = _conv_bn_relu(deep, det_channels, 3)
        self.det_mlp = nn.Sequential(AdaptiveAvgPool(pool_size), nn.Flatten(),
                                     nn.Linear(det_channels * pool_size * pool_size, hidden_features), nn.ReLU(),
                                     nn.Dropout(drop_rate), nn.Linear(hidden_features, 5))
        self.cls_conv = nn.Conv2d(deep, cls_channels, 1)
        # the transferred maps: 1x1 conv-BN into the classification width, summed with its own map
        self.from_seg = nn.Sequential(nn.Conv2d(chans[0], cls_channels, 1, bias=False), nn.BatchNorm2d(cls_channels))
        self.from_det = nn.Sequential(nn.Conv2d(det_channels, cls_channels, 1, bias=False),
                                      nn.BatchNorm2d(cls_channels))
        self.cls_drop = nn.Dropout(drop_rate)
        self.classifiers = nn.ModuleDict({t.name: nn.Linear(cls_channels, t.num_classes) for t in cls_tasks})
        self.gates = nn.ModuleList(nn.Linear(cls_channels, c) for c in chans) if gate else None

    def forward(self, feats: Features) -> dict[str, torch.Tensor]:
        if feats.pyramid is None:
            raise ValueError("the feature_transfer head needs the trunk's feature pyramid; got Features.pyramid=None")
        pyramid = feats.pyramid
        deep = pyramid[-1]
        skips = pyramid[-2::-1]
        early = self.up[0](deep, skips[0])                        # the segmentation branch's early map
        det_map = self.det_conv(deep)
        grid = deep.shape[-2:]
        fused = self.cls_conv(deep) + self.from_det(det_map) + \
            resize_bilinear(self.from_seg(early), grid)
        vec = self.cls_drop(F.relu(fused).mean(dim=(2, 3)))
        out = {name: clf(vec) for name, clf in self.classifiers.items()}
        x = early
        for k, skip in enumerate(skips):
            if k > 0:
                x = self.up[k](x, skip)
            if self.gates is not None:
                x = x * self.gates[k](vec).sigmoid()[:, :, None, None]
        out[self.seg_task] = resize_bilinear(self.seg_logits(x), feats.image_size)
        out[self.det_task] = box_output(self.det_mlp(det_map))
        return out
