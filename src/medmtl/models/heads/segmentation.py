"""A U-Net style decoder over the trunk's feature pyramid."""
from __future__ import annotations

import torch
from torch import nn

from medmtl.models.heads._base import HEADS, Features, Head
from medmtl.models.heads._common import check_head_tasks
from medmtl.models.heads._ops import resize_bilinear


def _conv_block(in_chs: int, out_chs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False), nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True),
        nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False), nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True))


class _UpBlock(nn.Module):
    """Upsample to the skip map's size, concatenate it, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_chs: int, skip_chs: int, out_chs: int):
        super().__init__()
        self.conv = _conv_block(in_chs + skip_chs, out_chs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Interpolate to the skip's exact size, not by a factor 2: odd inputs give stages whose
        # sizes are not exact halves, and some trunks have two stages at one stride.
        x = resize_bilinear(x, skip.shape[-2:])
        return self.conv(torch.cat([x, skip], dim=1))


class _Decoder(nn.Module):
    def __init__(self, feature_info: list[dict], decoder_channels: tuple[int, ...]):
        super().__init__()
        skips = [f["num_chs"] for f in feature_info[:-1]][::-1]
        in_chs, blocks = feature_info[-1]["num_chs"], []
        for skip_chs, out_chs in zip(skips, decoder_channels):
            blocks.append(_UpBlock(in_chs, skip_chs, out_chs))
            in_chs = out_chs
        self.blocks = nn.ModuleList(blocks)
        self.logits = nn.Conv2d(in_chs, 1, 1)

    def forward(self, pyramid: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        x = pyramid[-1]
        for block, skip in zip(self.blocks, pyramid[-2::-1]):
            x = block(x, skip)
        return resize_bilinear(self.logits(x), image_size)


def decoder_widths(feature_info: list[dict], decoder_channels=None) -> tuple[int, ...]:
    """Channels of each decoder step, deepest first: ``decoder_channels`` or the skips' own widths."""
    n_skips = len(feature_info) - 1
    chans = tuple(decoder_channels) if decoder_channels is not None else \
        tuple(f["num_chs"] for f in feature_info[:-1][::-1])
    if len(chans) != n_skips:
        raise ValueError(f"decoder_channels={decoder_channels!r} needs one entry per skip stage "
                         f"({n_skips} for a trunk with {len(feature_info)} stages)")
    return chans


@HEADS.register("segmentation", task_types=frozenset({"segmentation"}), needs_pyramid=True, multi_task=False)
class SegmentationHead(Head):
    """U-Net style decoder: from the deepest trunk map up through every shallower stage.

    The segmentation branch of FTMTLNet (Gao et al.), which joins classification, detection and
    segmentation of mammograms on one trunk; the decoder follows U-Net (Ronneberger et al. 2015):
    each step upsamples, concatenates the trunk's skip map and applies two 3x3 conv-BN-ReLU.
    Channel and stride per stage come from ``feature_info``, never from a dummy forward. The
    1-channel logits are bilinearly upsampled from the shallowest stage to the input size.

    Task types: segmentation (binary foreground mask), 2-D.
    Output: logits (B, 1, H, W) at the input image's resolution.

    Args:
        tasks: segmentation task specs (one decoder each).
        in_features: unused (the decoder reads the pyramid).
        feature_info: the trunk's per-stage ``{"num_chs", "reduction"}``, shallow to deep.
        decoder_channels: output channels of the decoder steps, deep to shallow, one per skip
            stage (``len(feature_info) - 1``); default: each skip stage's own channel count.

    Raises:
        ValueError: ``decoder_channels`` of the wrong length.
    """

    needs_pyramid = True

    def __init__(self, tasks, in_features: int, feature_info: list[dict],
                 decoder_channels: tuple[int, ...] | None = None):
        super().__init__(tasks, in_features, feature_info)
        self.decoder_channels = decoder_channels
        tasks = check_head_tasks("segmentation", tasks)
        chans = decoder_widths(feature_info, decoder_channels)
        self.decoder = nn.ModuleDict({t.name: _Decoder(feature_info, chans) for t in tasks})

    def forward(self, feats: Features) -> dict[str, torch.Tensor]:
        if feats.pyramid is None:
            raise ValueError("the segmentation head needs the trunk's feature pyramid; got Features.pyramid=None")
        return {name: dec(feats.pyramid, feats.image_size) for name, dec in self.decoder.items()}
