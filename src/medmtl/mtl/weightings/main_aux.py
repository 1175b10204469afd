"""``main_aux``: one main task plus weighted auxiliary tasks (Fang et al. 2019)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from medmtl.errors import ConfigError
from medmtl.mtl.weightings._base import WEIGHTINGS, Weighting, check_task_dict, weighted_sum

__all__ = ["MainAuxWeighting"]


class _MainAuxBase(Weighting):
    """``L = m L_main + (1 - m) sum_k w_k L_k``; subclasses choose the ``w_k`` in ``_aux_weights``.

    Attributes (after ``setup``):
        main_: The one task whose role is ``"main"``.
        aux_tasks_: The auxiliary tasks, in task order.
        aux_weights_: Buffer of their ``w_k`` (in ``aux_tasks_`` order), saved in ``state_dict``.
    """

    m: float

    def _setup(self, tasks, train_labels) -> None:
        if not 0.0 <= float(self.m) <= 1.0:
            raise ConfigError(f"{type(self).__name__}: m={self.m!r} is the main task's share of the loss and must "
                             "lie in [0, 1] (Fang et al. use 0.7)")
        mains = [t for t in self.tasks_ if self.roles_[t] == "main"]
        if len(mains) != 1:
            raise ConfigError(f"{type(self).__name__} needs exactly one task with role 'main'; got {mains or 'none'} "
                             f"among {self.tasks_}. Set role: auxiliary on the others in the config")
        self.main_ = mains[0]
        self.aux_tasks_ = [t for t in self.tasks_ if t != self.main_]
        w = self._aux_weights(tasks, train_labels)
        self.register_buffer("aux_weights_", torch.tensor([w[t] for t in self.aux_tasks_], dtype=torch.float64))

    def _aux_weights(self, tasks, train_labels) -> dict[str, float]:
        raise NotImplementedError

    def task_weights(self) -> dict[str, float]:
        """The effective weight of every task: ``m`` for the main task, ``(1 - m) w_k`` for auxiliary ``k``.

        With no auxiliary weight above zero the main task gets weight 1 rather than ``m``: scaling a
        lone loss by ``m`` would only shrink the learning rate.
        """
        self._check_is_setup()
        aux = dict(zip(self.aux_tasks_, self.aux_weights_.tolist()))
        m = float(self.m) if any(w > 0 for w in aux.values()) else 1.0
        return {self.main_: m, **{t: (1.0 - m) * w for t, w in aux.items()}}

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        names = self._check_losses(losses)
        all_weights = self.task_weights()
        weights = {t: all_weights[t] for t in names}
        return weighted_sum(losses, weights), weights


@WEIGHTINGS.register("main_aux", needs_per_task_grads=False, stateful=False, needs_labels=False,
                     has_parameters=False, extra=None)
class MainAuxWeighting(_MainAuxBase):
    """Main task plus auxiliary tasks, ``L = m L_mt + (1 - m) sum_k w_k L_k`` (Fang et al., SPIE Medical Imaging 2019, eqs. 1-3).

    Fang et al. set ``m = 0.7`` and leave ``w_k`` to the user (``spearman`` sets them from label
    correlations). Without ``aux_weights`` each of the ``K`` auxiliary tasks gets ``w_k = 1/K``, so
    that ``m`` is the main task's share of the total weight whatever ``K`` is; with ``w_k = 1`` the
    auxiliary share would grow with every auxiliary task added.

    Args:
        m: The main task's weight, in [0, 1].
        aux_weights: ``{auxiliary task: w_k}``; must name every auxiliary task. ``None`` gives ``1/K`` each.

    Exactly one task must have role ``"main"``. Works for any task kind.
    """

    def __init__(self, m: float = 0.7, aux_weights: dict[str, float] | None = None):
        super().__init__()
        self.m = m
        self.aux_weights = aux_weights

    def _aux_weights(self, tasks, train_labels) -> dict[str, float]:
        if self.aux_weights is None:
            k = len(self.aux_tasks_)
            return {t: 1.0 / k for t in self.aux_tasks_}
        given = check_task_dict(self.aux_weights, "main_aux weighting: aux_weights", self.aux_tasks_)
        missing = [t for t in self.aux_tasks_ if t not in given]
        if missing:
            raise ConfigError(f"main_aux weighting: aux_weights has no weight for auxiliary tasks {missing}; "
                             "give every auxiliary task a weight, or leave aux_weights unset for 1/K each")
        return given
