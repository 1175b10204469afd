"""CIFAR ResNeXt-29 (Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural
Networks", section 5.3), the shared trunk of the MTL-versus-TL study (paper 000: depth 29,
cardinality 8, base width 64, widening factor 4).

Layout of the reference CIFAR implementation (Xie's Torch code, ``prlz77/ResNeXt.pytorch``):
a 3x3 stride-1 stem with 64 channels, then 3 stages of ``(depth - 2) // 9`` bottleneck blocks
whose outputs have ``64 * widen_factor * 2**i`` channels (256/512/1024) and whose grouped 3x3
convolutions have ``cardinality * base_width * 2**i`` channels (512/1024/2048). Stages 2 and 3
halve the resolution. The 8x64d network has 34.4M parameters (34.42M here without the classifier).

Supports classification-style trunks on 2-D images; being CIFAR-style it is natively a
``small_input`` network (total stride 4), so a 224 px image costs ~50x a 32 px one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medmtl.models.trunks._base import TRUNKS, Trunk
from medmtl.models.trunks._helpers import channel_stats

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNeXtBottleneck(nn.Module):
    """1x1 reduce -> grouped 3x3 -> 1x1 expand, plus a projection shortcut when the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, cardinality: int, group_width: int):
        super().__init__()
        mid = cardinality * group_width
        self.conv1 = nn.Conv2d(in_chs, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.downsample = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = self.bn3(self.conv3(x))
        return F.relu(x + shortcut, inplace=True)


def _scaled(chs: float, width: float) -> int:
    return max(1, int(round(chs * width)))


def _make_stage(in_chs: int, out_chs: int, depth: int, stride: int, cardinality: int,
                group_width: int) -> nn.Sequential:
    blocks = [ResNeXtBottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1,
                                cardinality, group_width) for i in range(depth)]
    return nn.Sequential(*blocks)


@TRUNKS.register("resnext29", pretrained=(), small_input="native", paper="Xie et al. 2017")
class ResNeXt29(Trunk):
    """CIFAR ResNeXt-29 (8x64d by default) as a trunk.

    Args:
        cardinality: groups of the 3x3 convolutions (the paper's C).
        base_width: channels per group in the first stage (the paper's d); doubles per stage.
        widen_factor: first-stage output channels / 64 (4 gives 256/512/1024).
        depth: 9 * blocks_per_stage + 2; 29 gives 3 blocks per stage.
        width: medmtl's extra multiplier on every channel count (stem, outputs, group widths),
            so that ``width=0.125`` trains on a CPU; 1.0 is the paper's network.
        in_chans: input channels.
        drop_rate: dropout on the pooled features returned by ``forward`` (as timm's
            pre-classifier dropout); the feature maps are never dropped.

    Raises:
        ValueError: ``depth`` is not 9k + 2, or ``width`` is not positive.

    Example:
        >>> trunk = ResNeXt29(width=0.125)
        >>> trunk(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 128])
    """

    def __init__(self, cardinality: int = 8, base_width: int = 64, widen_factor: int = 4,
                 depth: int = 29, width: float = 1.0, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.cardinality, self.base_width, self.widen_factor = cardinality, base_width, widen_factor
        self.depth, self.width, self.in_chans, self.drop_rate = depth, width, in_chans, drop_rate
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"resnext29: depth={depth!r} must be 9 * blocks_per_stage + 2 "
                             "(choose 11, 20, 29, 38, ...); the paper uses 29")
        if not width > 0:
            raise ValueError(f"resnext29: width={width!r} must be > 0 (1.0 is the paper's network)")
        blocks = (depth - 2) // 9
        stem_chs = _scaled(64, width)
        outs = [_scaled(64 * widen_factor * 2 ** i, width) for i in range(3)]
        groups = [_scaled(base_width * 2 ** i, width) for i in range(3)]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_chs, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(stem_chs), nn.ReLU(inplace=True))
        self.stage1 = _make_stage(stem_chs, outs[0], blocks, 1, cardinality, groups[0])
        self.stage2 = _make_stage(outs[0], outs[1], blocks, 2, cardinality, groups[1])
        self.stage3 = _make_stage(outs[1], outs[2], blocks, 2, cardinality, groups[2])
        self.num_features = outs[2]
        self.feature_info = [{"num_chs": c, "reduction": r, "module": m} for c, r, m in
                             zip([stem_chs, *outs], [1, 1, 2, 4], ["stem", "stage1", "stage2", "stage3"])]
        self.pretrained_cfg = {"mean": channel_stats(IMAGENET_MEAN, in_chans),
                               "std": channel_stats(IMAGENET_STD, in_chans),
                               "input_size": (in_chans, 32, 32), "source": "random"}
        self._init_weights()

    def _init_weights(self) -> None:
        # He init (fan_out) as in the reference implementation; BN starts as identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.stage1, self.stage2, self.stage3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = super().forward(x)
        return F.dropout(pooled, self.drop_rate, self.training) if self.drop_rate else pooled
