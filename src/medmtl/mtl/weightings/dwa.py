"""``dwa``: Dynamic Weight Average (Liu, Johns & Davison 2019)."""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from medmtl.mtl.weightings._base import WEIGHTINGS, Weighting, weighted_sum

__all__ = ["DwaWeighting"]


@WEIGHTINGS.register("dwa", needs_per_task_grads=False, stateful=True, needs_labels=False,
                     has_parameters=False, extra=None)
class DwaWeighting(Weighting):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019, eq. 7).

    ``w_k(t) = K exp(r_k(t-1) / T) / sum_i exp(r_i(t-1) / T)`` with ``r_k(t-1) = L_k(t-1) / L_k(t-2)``,
    the ratio of task ``k``'s average training loss over the last two epochs. A task whose loss falls
    more slowly gets more weight; the weights sum to ``K``. The first two epochs use ``w_k = 1``.
    Weights change only in ``epoch_end``, never within an epoch.

    ``T`` is a hyper-parameter of this object; LibMTL's DWA instead reads ``T`` from per-call kwargs
    and an epoch counter the trainer sets. Here the loss history lives in buffers, so
    ``state_dict`` resumes the weights exactly, and the epoch count is the number of
    ``epoch_end`` calls.

    Args:
        T: Softmax temperature; larger values give more even weights (the paper uses 2).

    Attributes:
        loss_history_: Buffer ``(2, K)``: average losses of the last two epochs (row 1 the latest).
        epochs_seen_: Buffer: number of ``epoch_end`` calls so far.
        weights_: Buffer ``(K,)``: the weights used until the next ``epoch_end``.

    A task with no loss in one of the last two epochs (NaN, e.g. no sample drawn) gets ratio 1.
    Works for any task kind.
    """

    def __init__(self, T: float = 2.0):
        super().__init__()
        self.T = T

    def _setup(self, tasks, train_labels) -> None:
        if not float(self.T) > 0:
            raise ValueError(f"dwa weighting: T={self.T!r} is a softmax temperature and must be > 0 (the paper uses 2)")
        k = len(self.tasks_)
        self.register_buffer("loss_history_", torch.full((2, k), math.nan, dtype=torch.float64))
        self.register_buffer("epochs_seen_", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_epoch_", torch.full((), -(2**62), dtype=torch.long))
        self.register_buffer("weights_", torch.ones(k, dtype=torch.float64))

    def epoch_end(self, epoch: int, epoch_losses: Mapping[str, float]) -> None:
        self._check_is_setup()
        missing = [t for t in self.tasks_ if t not in epoch_losses]
        if missing:
            raise ValueError(f"dwa weighting: epoch_losses lacks tasks {missing}; give every task's average "
                             "training loss (NaN if it had no sample)")
        if int(epoch) <= int(self.last_epoch_):
            raise ValueError(f"dwa weighting: epoch_end(epoch={epoch}) after epoch {int(self.last_epoch_)}; each "
                             "epoch must be reported once, in order, or the loss ratios would be wrong")
        latest = torch.tensor([float(epoch_losses[t]) for t in self.tasks_], dtype=torch.float64,
                              device=self.loss_history_.device)
        self.loss_history_[0] = self.loss_history_[1]
        self.loss_history_[1] = latest
        self.epochs_seen_ += 1
        self.last_epoch_.fill_(int(epoch))
        if int(self.epochs_seen_) >= 2:
            prev, last = self.loss_history_[0], self.loss_history_[1]
            ratio = last / prev.clamp_min(torch.finfo(prev.dtype).tiny)
            ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
            self.weights_.copy_(len(self.tasks_) * torch.softmax(ratio / float(self.T), dim=0))

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        names = self._check_losses(losses)
        all_w = dict(zip(self.tasks_, self.weights_.tolist()))
        weights = {t: all_w[t] for t in names}
        return weighted_sum(losses, weights), weights
