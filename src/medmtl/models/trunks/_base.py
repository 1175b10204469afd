"""The trunk contract: the shared part of every multi-task network.

Kept close to timm's split (``forward_features`` returns the unpooled map, pooling happens
outside) so any timm model can be a trunk, and dense heads size themselves from
``feature_info`` (channels and stride per stage), never from a dummy forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medmtl._registry import Registry


@dataclass(frozen=True)
class TrunkInfo:
    """``pretrained``: the named weights it has (``("imagenet",)``); ``small_input``: ``"native"``
    (built for 28-64 px), ``"option"`` (a ``small_input`` switch) or None; ``paper``: its source."""

    pretrained: tuple = ()
    small_input: str | None = None
    paper: str | None = None


TRUNKS: Registry = Registry("trunk", TrunkInfo)


class Trunk(nn.Module):
    """Base class of every trunk.

    Subclasses set, in ``__init__``:
        num_features: channels of the last feature map (the pooled feature size).
        feature_info: one dict per stage, ``{"num_chs": C, "reduction": stride, "module": name}``,
            from the stem to the last stage; ``forward_pyramid`` returns one map per entry.
        pretrained_cfg: ``{"mean": (...), "std": (...), "input_size": (C, H, W), "source": str}``.
    and implement ``stages()`` (and ``forward_pyramid()`` when the stages do not simply chain).
    """

    num_features: int
    feature_info: list[dict]
    pretrained_cfg: dict

    def stages(self) -> list[nn.Module]:
        """Modules in input-to-output order; freezing ``k`` stages freezes ``stages()[:k]``."""
        raise NotImplementedError

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One feature map per ``feature_info`` entry (for U-Net style decoders).

        The default runs ``stages()`` in order, which is right whenever each stage feeds the next.
        """
        maps = []
        for stage in self.stages():
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last, unpooled feature map (B, num_features, h, w)."""
        return self.forward_pyramid(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features (B, num_features)."""
        return self.forward_features(x).mean(dim=(2, 3))


@TRUNKS.register("test_tiny", pretrained=())
class TinyTrunk(Trunk):
    """Two conv stages, for fast tests of heads and the engine (as timm's ``test_*`` models)."""

    def __init__(self, in_chans: int = 3, width: int = 8, **_: object):
        super().__init__()
        self.in_chans, self.width = in_chans, width
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.num_features = 2 * width
        self.feature_info = [{"num_chs": width, "reduction": 2, "module": "stem"},
                             {"num_chs": 2 * width, "reduction": 4, "module": "stage1"}]
        self.pretrained_cfg = {"mean": (0.5,) * in_chans, "std": (0.5,) * in_chans,
                               "input_size": (in_chans, 32, 32), "source": "random"}

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.stage1]
