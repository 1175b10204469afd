"""``rlw``: Random Loss Weighting (Lin et al. 2021)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from medmtl.mtl.weightings._base import WEIGHTINGS, Weighting, weighted_sum

__all__ = ["RlwWeighting"]


@WEIGHTINGS.register("rlw", needs_per_task_grads=False, stateful=True, needs_labels=False,
                     has_parameters=False, extra=None)
class RlwWeighting(Weighting):
    """Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning", arXiv 2111.10603, 2021; TMLR 2022).

    Every step draws ``z ~ N(0, I_K)`` and uses ``w = softmax(z)`` (weights sum to 1). Lin et al.
    show this matches many adaptive methods, which makes it the second baseline to beat after ``equal``.

    The draws come from a private CPU ``torch.Generator`` seeded with ``seed``, never from the
    global RNG, so the weighting neither disturbs nor depends on dropout and augmentation draws,
    and the same weights appear on any device. The generator's state is saved in ``state_dict``
    (as extra state), so a resumed run draws the same weights it would have drawn. All ``K``
    weights are drawn each step even when some tasks are absent from the batch, so the sequence
    does not depend on batch composition.

    Args:
        seed: Seed of the generator.

    Attributes:
        generator_: The ``torch.Generator``.

    Works for any task kind.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed

    def _setup(self, tasks, train_labels) -> None:
        self.generator_ = torch.Generator(device="cpu").manual_seed(int(self.seed))

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        names = self._check_losses(losses)
        z = torch.randn(len(self.tasks_), generator=self.generator_, dtype=torch.float64)
        all_w = dict(zip(self.tasks_, torch.softmax(z, dim=0).tolist()))
        weights = {t: all_w[t] for t in names}
        return weighted_sum(losses, weights), weights

    def get_extra_state(self) -> Any:
        if not hasattr(self, "generator_"):
            return {}
        return {"generator_state": self.generator_.get_state()}

    def set_extra_state(self, state: Any) -> None:
        if state and "generator_state" in state:
            if not hasattr(self, "generator_"):
                self.generator_ = torch.Generator(device="cpu")
            self.generator_.set_state(state["generator_state"])
