"""AlexNet's five convolutional layers as a trunk (Krizhevsky et al. 2012, in torchvision's
single-tower form without local response normalisation).

Samala et al. 2017 (paper 003) transfer an ImageNet AlexNet to 128x128 mammogram ROIs by
freezing its first ``n`` convolution layers, so each convolution (with its ReLU and the
max-pool before it) is one stage here and ``stages()[:n]`` are exactly the layers they froze.
The paper's network also had LRN layers, which torchvision's (and so this) one has not.

The layer list, and so every ``state_dict`` key (``features.0.weight`` ...), is the one of
``torchvision.models.alexnet().features``, so torchvision AlexNet weights fit without renaming.
Supports 2-D images; with ``small_input=False`` a 64 px input ends at 1x1.
"""
from __future__ import annotations

from torch import nn

from medmtl.models.trunks._base import TRUNKS, Trunk
from medmtl.models.trunks._helpers import channel_stats

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Index ranges of ``features`` per stage: conv1 | pool conv2 | pool conv3 | conv4 | conv5 pool.
_STAGE_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 13))


@TRUNKS.register("alexnet", pretrained=(), small_input="option", paper="Krizhevsky et al. 2012")
class AlexNetTrunk(Trunk):
    """torchvision's AlexNet ``features`` split into its five convolution stages.

    Args:
        in_chans: input channels of the first convolution.
        small_input: keep the 11x11 first convolution but with stride 1 and padding 5 instead
            of stride 4 and padding 2, so 28-64 px images keep a spatial map (28 px ends at
            2x2 instead of vanishing). The weight shapes do not change, so checkpoints move
            between the two variants; the reductions become 1/2/4/4/8 instead of 4/8/16/16/32.

    The reductions in ``feature_info`` are nominal: the unpadded 11x11 stride-4 convolution and
    the unpadded 3x3 stride-2 pools lose a border pixel or two (64 px gives 15/7/3/3/1, not
    16/8/4/4/2), as in the original network.
    """

    def __init__(self, in_chans: int = 3, small_input: bool = False):
        super().__init__()
        self.in_chans, self.small_input = in_chans, small_input
        stride, pad = (1, 5) if small_input else (4, 2)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, 11, stride, pad), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        first = 1 if small_input else 4
        reductions = [first, 2 * first, 4 * first, 4 * first, 8 * first]
        self.num_features = 256
        self.feature_info = [{"num_chs": c, "reduction": r, "module": f"features.{end - 1}"}
                             for c, r, (_, end) in zip([64, 192, 384, 256, 256], reductions, _STAGE_SLICES)]
        self.pretrained_cfg = {"mean": channel_stats(IMAGENET_MEAN, in_chans),
                               "std": channel_stats(IMAGENET_STD, in_chans),
                               "input_size": (in_chans, 224, 224), "source": "random"}

    def stages(self) -> list[nn.Module]:
        # Slicing a Sequential builds a new container around the same layers, so freezing a
        # returned stage freezes the trunk's own parameters.
        return [self.features[start:end] for start, end in _STAGE_SLICES]
