"""``mean``: every labelled sample in the batch counts once, whatever its task."""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from medmtl.mtl.weightings._base import WEIGHTINGS, Weighting, weighted_sum

__all__ = ["MeanWeighting"]


@WEIGHTINGS.register("mean", needs_per_task_grads=False, stateful=False, needs_labels=False,
                     has_parameters=False, extra=None)
class MeanWeighting(Weighting):
    """Average of the per-sample losses over the whole batch (Mormont, Geurts & Marée, IEEE JBHI 2020, eq. 1).

    ``L = (1/B) sum_k sum_{j in batch of task k} l_kj = sum_k (n_k / B) L_k`` with ``L_k`` the task's mean
    loss and ``B = sum_k n_k``. A task's weight is therefore its share of the batch: this weights
    tasks by sample count, so the sampler (not the weighting) decides how much each task matters.
    Mormont et al. pair it with a sampler that draws a task first, then an image, which makes the
    expected counts equal; with a proportional sampler large datasets dominate. ``equal`` is the
    count-independent alternative.

    Works for any task kind whose loss is a per-sample average.
    """

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        names = self._check_losses(losses)
        if counts is None:
            raise ValueError("the 'mean' weighting needs counts={task: samples in the batch} to turn "
                             "per-task means back into a per-sample average; pass counts= or use 'equal'")
        missing = [t for t in names if t not in counts]
        if missing:
            raise ValueError(f"counts has no entry for tasks {missing} that are in losses; give every task's "
                             "number of labelled samples in the batch")
        n = {t: int(counts[t]) for t in names}
        bad = {t: c for t, c in n.items() if c < 0}
        if bad:
            raise ValueError(f"counts must be >= 0; got {bad}")
        total_n = sum(n.values())
        if total_n == 0:
            raise ValueError(f"counts are all zero for the tasks in losses ({names}); the batch has no labelled sample")
        weights = {t: n[t] / total_n for t in names}
        return weighted_sum(losses, weights), weights
