"""``upgrad``: Unconflicting Projection of Gradients (TorchJD)."""
from __future__ import annotations

from medmtl.mtl.weightings._base import WEIGHTINGS
from medmtl.mtl.weightings._jacobian import JacobianWeighting

__all__ = ["UpgradWeighting"]


@WEIGHTINGS.register("upgrad", needs_per_task_grads=True, stateful=False, needs_labels=False,
                     has_parameters=False, extra="torchjd[quadprog_projector]")
class UpgradWeighting(JacobianWeighting):
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232, 2024).

    Projects every task's gradient onto the dual cone of all task gradients and averages the
    projections, so the update never conflicts with any task (non-negative inner product with
    each task's gradient) and equals the mean gradient when no two tasks conflict.

    Needs ``pip install "torchjd[quadprog_projector]"`` (qpsolvers, quadprog) for its projection;
    ``setup`` raises ImportError naming it otherwise.

    Args:
        parallel_chunk_size: Loss rows differentiated at once by TorchJD (``None``: all, through
            ``torch.vmap``; ``1`` avoids vmap where an op does not support it).

    Works for any task kind.
    """

    _requires = ("qpsolvers", "quadprog")
    _extra = "torchjd[quadprog_projector]"

    def __init__(self, parallel_chunk_size: int | None = None):
        super().__init__()
        self.parallel_chunk_size = parallel_chunk_size

    def _make_aggregator(self, n_tasks: int):
        # lazy: TorchJD is heavy and only its weightings need it
        from torchjd.aggregation import UPGrad

        return UPGrad()
