"""``fixed``: constant per-task weights, by default each task's ``loss_weight``."""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from medmtl.errors import ConfigError
from medmtl.mtl.weightings._base import WEIGHTINGS, Weighting, check_task_dict, weighted_sum

__all__ = ["FixedWeighting"]


@WEIGHTINGS.register("fixed", needs_per_task_grads=False, stateful=False, needs_labels=False,
                     has_parameters=False, extra=None)
class FixedWeighting(Weighting):
    """Linear scalarisation with hand-set weights, ``L = sum_k w_k L_k`` (Caruana, Machine Learning 1997).

    Args:
        weights: ``{task: w_k}``. Tasks left out keep their config ``loss_weight`` (1.0 unless set),
            so ``weights=None`` applies the ``loss_weight`` of every task.

    Attributes:
        weights_: The resolved ``{task: w_k}`` for every task.

    Works for any task kind.
    """

    def __init__(self, weights: dict[str, float] | None = None):
        super().__init__()
        self.weights = weights

    def _setup(self, tasks, train_labels) -> None:
        given = check_task_dict(self.weights, "fixed weighting: weights", self.tasks_)
        resolved = {}
        for t in tasks:
            w = given.get(t.name, float(getattr(t, "loss_weight", 1.0)))
            if not (w >= 0 and w < float("inf")):
                raise ConfigError(f"task {t.name!r}: loss_weight={w!r} must be finite and >= 0")
            resolved[t.name] = w
        self.weights_ = resolved

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        weights = {t: self.weights_[t] for t in self._check_losses(losses)}
        return weighted_sum(losses, weights), weights
