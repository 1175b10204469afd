"""``uncertainty``: learned homoscedastic-uncertainty weights (Kendall, Gal & Cipolla 2018)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from medmtl.mtl.weightings._base import WEIGHTINGS, Weighting

__all__ = ["UncertaintyWeighting"]


@WEIGHTINGS.register("uncertainty", needs_per_task_grads=False, stateful=True, needs_labels=False,
                     has_parameters=True, extra=None)
class UncertaintyWeighting(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses", CVPR 2018).

    One learnable log-variance ``s_k = log sigma_k^2`` per task, and
    ``L = sum_k exp(-s_k) L_k + s_k``.

    This is the form most re-implementations use (e.g. LibMTL's ``UW``): precision ``exp(-s_k)``
    times the loss plus ``log sigma_k^2``. Kendall et al.'s classification bound (their eq. 10,
    ``L_k / sigma_k^2 + log sigma_k``) has ``s_k / 2`` as the regulariser instead; both reach their
    minimum where the weight ``exp(-s_k)`` is inversely proportional to the loss (``exp(-s_k) = 1/L_k``
    here, ``1/(2 L_k)`` there), so only the overall scale differs. Parametrising ``log sigma^2``
    rather than ``sigma`` keeps the weight positive and the optimisation stable, as the paper advises.

    The log-variances start at 0 (all weights 1). ``setup`` creates them, so build the optimiser
    afterwards and include ``weighting.parameters()`` (registry flag ``has_parameters``); they are
    saved in ``state_dict``.

    Attributes:
        log_vars_: ``nn.Parameter`` of shape ``(K,)``, in ``tasks_`` order.

    Works for any task kind.
    """

    def _setup(self, tasks, train_labels) -> None:
        self.log_vars_ = nn.Parameter(torch.zeros(len(self.tasks_)))

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        names = self._check_losses(losses)
        idx = torch.tensor([self.tasks_.index(t) for t in names], device=self.log_vars_.device)
        s = self.log_vars_.index_select(0, idx)
        stacked = torch.stack([losses[t] for t in names]).to(s.dtype)
        total = (torch.exp(-s) * stacked + s).sum()
        return total, dict(zip(names, torch.exp(-s.detach()).tolist()))
