"""``cagrad``: Conflict-Averse Gradient descent (TorchJD)."""
from __future__ import annotations

from medmtl.mtl.weightings._base import WEIGHTINGS
from medmtl.mtl.weightings._jacobian import JacobianWeighting

__all__ = ["CagradWeighting"]


@WEIGHTINGS.register("cagrad", needs_per_task_grads=True, stateful=False, needs_labels=False,
                     has_parameters=False, extra="torchjd[cagrad]")
class CagradWeighting(JacobianWeighting):
    """CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021, Algorithm 1).

    Within a ball of radius ``c * |g_0|`` around the average gradient ``g_0``, takes the update that
    maximises the worst task's improvement. ``c = 0`` gives the average gradient; larger ``c``
    moves towards MGDA's min-norm direction. TorchJD solves the dual with cvxpy/Clarabel, so it
    needs ``pip install "torchjd[cagrad]"``; ``setup`` raises ImportError naming it otherwise.

    Args:
        c: Radius scale of the ball (the paper's default 0.5).
        parallel_chunk_size: Loss rows differentiated at once by TorchJD (``None``: all, through
            ``torch.vmap``; ``1`` avoids vmap where an op does not support it).

    Works for any task kind.
    """

    _requires = ("cvxpy", "clarabel")
    _extra = "torchjd[cagrad]"

    def __init__(self, c: float = 0.5, parallel_chunk_size: int | None = None):
        super().__init__()
        self.c = c
        self.parallel_chunk_size = parallel_chunk_size

    def _make_aggregator(self, n_tasks: int):
        # lazy: TorchJD is heavy and only its weightings need it
        from torchjd.aggregation import CAGrad

        if not float(self.c) >= 0:
            raise ValueError(f"cagrad weighting: c={self.c!r} scales the radius of a ball and must be >= 0")
        return CAGrad(c=float(self.c))
