"""``pcgrad``: Projecting Conflicting Gradients (TorchJD)."""
from __future__ import annotations

from medmtl.mtl.weightings._base import WEIGHTINGS
from medmtl.mtl.weightings._jacobian import JacobianWeighting

__all__ = ["PcgradWeighting"]


@WEIGHTINGS.register("pcgrad", needs_per_task_grads=True, stateful=False, needs_labels=False,
                     has_parameters=False, extra="torchjd")
class PcgradWeighting(JacobianWeighting):
    """PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

    For each task gradient, in a random order of the others, removes its component along any
    task gradient it conflicts with (negative inner product), then sums the results. Without
    conflicts it is the plain sum of gradients.

    TorchJD draws that order with ``torch.randperm`` from the global RNG, so runs are reproducible
    under a fixed global seed (which the engine checkpoints), and with two tasks the order has no
    effect.

    Args:
        parallel_chunk_size: Loss rows differentiated at once by TorchJD (``None``: all, through
            ``torch.vmap``; ``1`` avoids vmap where an op does not support it).

    Works for any task kind.
    """

    def __init__(self, parallel_chunk_size: int | None = None):
        super().__init__()
        self.parallel_chunk_size = parallel_chunk_size

    def _make_aggregator(self, n_tasks: int):
        # lazy: TorchJD is heavy and only its weightings need it
        from torchjd.aggregation import PCGrad

        return PCGrad()
