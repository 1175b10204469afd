"""``mgda``: Multiple Gradient Descent Algorithm (TorchJD)."""
from __future__ import annotations

from medmtl.mtl.weightings._base import WEIGHTINGS
from medmtl.mtl.weightings._jacobian import JacobianWeighting

__all__ = ["MgdaWeighting"]


@WEIGHTINGS.register("mgda", needs_per_task_grads=True, stateful=False, needs_labels=False,
                     has_parameters=False, extra="torchjd")
class MgdaWeighting(JacobianWeighting):
    """MGDA (Désidéri 2012; Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

    The update is the minimum-norm point of the convex hull of the task gradients (found with
    Sener & Koltun's Frank-Wolfe solver, their Algorithm 2). Its inner product with every task
    gradient is at least its squared norm, so no task's loss increases to first order; the price
    is that the update shrinks to zero as soon as two tasks conflict exactly (Pareto-stationary).

    Args:
        epsilon: Frank-Wolfe stopping tolerance.
        max_iters: Frank-Wolfe iteration cap.
        parallel_chunk_size: Loss rows differentiated at once by TorchJD (``None``: all, through
            ``torch.vmap``; ``1`` avoids vmap where an op does not support it).

    Works for any task kind.
    """

    def __init__(self, epsilon: float = 0.001, max_iters: int = 100, parallel_chunk_size: int | None = None):
        super().__init__()
        self.epsilon = epsilon
        self.max_iters = max_iters
        self.parallel_chunk_size = parallel_chunk_size

    def _make_aggregator(self, n_tasks: int):
        # lazy: TorchJD is heavy and only its weightings need it
        from torchjd.aggregation import MGDA

        return MGDA(epsilon=float(self.epsilon), max_iters=int(self.max_iters))
