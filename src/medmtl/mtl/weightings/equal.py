"""``equal``: the plain sum of task losses."""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from medmtl.mtl.weightings._base import WEIGHTINGS, Weighting, weighted_sum

__all__ = ["EqualWeighting"]


@WEIGHTINGS.register("equal", needs_per_task_grads=False, stateful=False, needs_labels=False,
                     has_parameters=False, extra=None)
class EqualWeighting(Weighting):
    """Sum of the task losses, each with weight 1 (the joint objective of Obonyo & Ruiru, IJCCI 2019, eq. 5).

    ``L = sum_k L_k``, each ``L_k`` the task's mean loss in the batch. Unlike ``mean``, which weights
    a task by its number of samples in the batch, every task present counts the same however many
    of its images the sampler drew. It is the honest baseline every adaptive weighting must beat.
    Each task's ``loss_weight`` is ignored; ``fixed`` applies it.

    Works for any task kind.
    """

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        weights = {t: 1.0 for t in self._check_losses(losses)}
        return weighted_sum(losses, weights), weights
