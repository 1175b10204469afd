"""Small helpers shared by the trunk files (no trunk lives here)."""
from __future__ import annotations

from collections.abc import Sequence


def channel_stats(stats: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel normalisation statistics for ``in_chans`` input channels.

    One channel gets the mean of the RGB statistics, because ``adapt_input_conv`` sums the RGB
    filters: a grey image normalised once then sees roughly what the RGB filters saw. More
    channels cycle the RGB values, as ``adapt_input_conv`` cycles the filters.

    Args:
        stats: the 3-channel (RGB) mean or std.
        in_chans: number of input channels of the trunk.

    Returns:
        A tuple with ``in_chans`` values.
    """
    stats = tuple(float(s) for s in stats)
    if in_chans == len(stats):
        return stats
    if in_chans == 1:
        return (sum(stats) / len(stats),)
    return tuple(stats[i % len(stats)] for i in range(in_chans))
