"""``nashmtl``: Nash bargaining over task gradients (TorchJD)."""
from __future__ import annotations

import warnings
from typing import Any

import torch

from medmtl.mtl.weightings._base import WEIGHTINGS
from medmtl.mtl.weightings._jacobian import JacobianWeighting

__all__ = ["NashMtlWeighting"]


@WEIGHTINGS.register("nashmtl", needs_per_task_grads=True, stateful=True, needs_labels=False,
                     has_parameters=False, extra="torchjd[nash_mtl]")
class NashMtlWeighting(JacobianWeighting):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022, Algorithm 1).

    Chooses task weights ``alpha`` that solve ``G^T G alpha = 1/alpha`` (the Nash bargaining
    solution), so that every task's share of the update is proportional to the inverse of its
    weight, and clips the update norm to ``max_norm``. TorchJD solves it with cvxpy/ECOS and
    needs ``pip install "torchjd[nash_mtl]"``; ``setup`` raises ImportError naming it otherwise.

    The number of tasks is fixed at ``setup``: every batch must give a loss for every task (use a
    sampler that draws each task in each batch). The solver's warm-start state (step, previous
    ``alpha``, normalisation) is saved in ``state_dict`` so a resumed run continues identically.

    Args:
        max_norm: Upper bound on the norm of the update (0 disables clipping).
        update_weights_every: Re-solve for ``alpha`` every this many steps, reusing it in between.
        optim_niter: Iterations of the sequential convex solver.
        parallel_chunk_size: Loss rows differentiated at once by TorchJD (``None``: all, through
            ``torch.vmap``; ``1`` avoids vmap where an op does not support it).

    Works for any task kind.
    """

    _requires = ("cvxpy", "ecos")
    _extra = "torchjd[nash_mtl]"

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20,
                 parallel_chunk_size: int | None = None):
        super().__init__()
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.parallel_chunk_size = parallel_chunk_size

    def _make_aggregator(self, n_tasks: int):
        # lazy: TorchJD is heavy and only its weightings need it
        from torchjd.aggregation import NashMTL

        return NashMTL(n_tasks=n_tasks, max_norm=float(self.max_norm),
                       update_weights_every=int(self.update_weights_every), optim_niter=int(self.optim_niter))

    def backward(self, *args, **kwargs) -> dict[str, float]:
        with warnings.catch_warnings():
            # cvxpy warns on every solve that TorchJD's problem is not DPP (so it is recompiled each
            # time); that costs time, not correctness, and would flood the training log.
            warnings.filterwarnings("ignore", message=".*not DPP", category=UserWarning)
            return super().backward(*args, **kwargs)

    def _check_active(self, active: list[str]) -> None:
        if len(active) != len(self.tasks_):
            missing = [t for t in self.tasks_ if t not in active]
            raise ValueError(f"nashmtl weighting: tasks {missing} have no loss that requires grad in this batch, but "
                             f"Nash-MTL solves for all {len(self.tasks_)} tasks at once; use a sampler that puts "
                             "every task in every batch, or another weighting")

    # TorchJD keeps the solver state in numpy attributes outside state_dict; they are stored as
    # tensors so checkpoints still load with weights_only=True.
    def get_extra_state(self) -> Any:
        inner = getattr(getattr(self, "aggregator_", None), "weighting", None)
        if inner is None:
            return {}
        return {"step": float(inner.step),
                "prvs_alpha": torch.as_tensor(inner.prvs_alpha, dtype=torch.float64),
                "normalization_factor": torch.as_tensor(inner.normalization_factor, dtype=torch.float64)}

    def set_extra_state(self, state: Any) -> None:
        inner = getattr(getattr(self, "aggregator_", None), "weighting", None)
        if not state:
            return
        if inner is None:
            raise RuntimeError("nashmtl weighting: call setup(tasks) before load_state_dict, which restores the "
                               "solver state of the aggregator that setup builds")
        inner.prvs_alpha = state["prvs_alpha"].numpy().astype(inner.prvs_alpha.dtype)
        inner.normalization_factor = state["normalization_factor"].numpy()
        inner.step = float(state["step"])
        if inner.step > 0:
            # The solver problem is built on the first step; a resumed run skips that step, so
            # build it here, warm-started from the restored alpha.
            inner._init_optim_problem()
