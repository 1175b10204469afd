"""Shared machinery of the gradient-based weightings, which aggregate the Jacobian with TorchJD.

TorchJD (``torchjd`` on PyPI, API of version 0.18) splits the work in two: ``autojac.backward`` or
``autojac.mtl_backward`` store each task's gradient on the shared parameters as a row of a
Jacobian in their ``.jac`` fields, then ``autojac.jac_to_grad`` reduces the Jacobian with an
aggregator (UPGrad, PCGrad, ...) and accumulates the result into ``.grad``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import import_module

import torch
from torch import Tensor

from medmtl.mtl.weightings._base import Weighting

__all__ = ["JacobianWeighting"]


def _task_params(tensors: Sequence[Tensor], exclude: Sequence[Tensor]) -> list[Tensor]:
    """Leaf tensors that ``tensors`` depend on, other than ``exclude`` (the task-specific parameters).

    Walks the autograd graph from each loss; an ``AccumulateGrad`` node marks a leaf that requires
    a gradient. The order is deterministic (first seen, depth first).
    """
    excluded = {id(p) for p in exclude}
    out, seen_leaf, seen_fn = [], set(), set()
    stack = [t.grad_fn for t in reversed(tensors) if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen_fn:
            continue
        seen_fn.add(fn)
        leaf = getattr(fn, "variable", None)
        if leaf is not None:
            if id(leaf) not in excluded and id(leaf) not in seen_leaf:
                seen_leaf.add(id(leaf))
                out.append(leaf)
            continue
        stack.extend(f for f, _ in reversed(fn.next_functions) if f is not None)
    return out


class JacobianWeighting(Weighting):
    """Base of the TorchJD-backed weightings (registry flag ``needs_per_task_grads=True``).

    ``backward`` fills ``.grad`` of the shared parameters with the aggregated update and gives
    every task-specific parameter its own task's gradient (a head is used by one task, so nothing
    needs aggregating there). ``forward`` only sums the losses, for logging.

    Subclasses set ``_requires`` (importable modules beyond torchjd), ``_extra`` (the pip
    requirement providing them) and build the aggregator in ``_make_aggregator``.

    Attributes:
        aggregator_: The ``torchjd.aggregation.Aggregator``.
    """

    _requires: tuple[str, ...] = ()
    _extra: str = "torchjd"

    @classmethod
    def check_available(cls) -> None:
        """Raise ImportError naming the pip requirement when an optional dependency is missing.

        Modules are imported, not just located: TorchJD checks with ``find_spec`` and silently
        swallows an ImportError at import time, so a broken cvxpy install (a missing ``qdldl``)
        would otherwise surface later as a ``NameError`` inside the solver.
        """
        for module in ("torchjd", *cls._requires):
            try:
                import_module(module)
            except ImportError as exc:
                raise ImportError(f"the {cls.__name__} weighting needs {module!r} ({exc}); "
                                  f'install it with: pip install "{cls._extra}"') from exc

    def _make_aggregator(self, n_tasks: int):
        raise NotImplementedError

    def _setup(self, tasks, train_labels) -> None:
        self.check_available()
        self.aggregator_ = self._make_aggregator(len(self.tasks_))

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        names = self._check_losses(losses)
        # Only a value to log: the update of a gradient-based weighting comes from backward().
        return torch.stack([losses[t] for t in names]).sum(), {}

    def backward(self, losses: Mapping[str, Tensor], shared_params: Sequence[Tensor],
                 shared_features: Tensor | Sequence[Tensor] | None = None,
                 counts: Mapping[str, int] | None = None) -> dict[str, float]:
        """Aggregate the per-task gradients of the shared parameters into their ``.grad``.

        With ``shared_features`` TorchJD's ``mtl_backward`` takes the Jacobian with respect to the
        features and pulls it back through the trunk once for all tasks; without them
        ``autojac.backward`` differentiates each loss through the trunk. The heads (every leaf the
        losses reach that is not in ``shared_params``) then receive their own task's gradient.

        Args:
            losses: ``{task: scalar loss}``; a loss that does not require grad (no labelled sample
                in the batch) is left out of the Jacobian and reported with weight 0.
            shared_params: The trunk parameters; only those with ``requires_grad`` are used.
            shared_features: The trunk's output the heads read, when available.
            counts: Ignored.

        Returns:
            ``{task: weight}`` for the tasks in ``losses`` (the aggregator's row weights, when it
            has them), else ``{}``.
        """
        # lazy: TorchJD is heavy and only the Jacobian weightings need it
        from torchjd.autojac import backward as jac_backward
        from torchjd.autojac import jac_to_grad, mtl_backward

        names = self._check_losses(losses)
        active = [t for t in names if losses[t].requires_grad]
        params = [p for p in shared_params if p.requires_grad]
        if not active or not params:
            raise ValueError(f"{type(self).__name__}.backward: nothing to differentiate ({len(active)} losses "
                             f"that require grad, {len(params)} shared parameters that require grad)")
        self._check_active(active)
        tensors = [losses[t] for t in active]
        chunk = self.parallel_chunk_size
        if shared_features is not None:
            mtl_backward(tensors, features=shared_features, shared_params=params, parallel_chunk_size=chunk)
        else:
            heads = _task_params(tensors, exclude=params)
            jac_backward(tensors, inputs=params, retain_graph=bool(heads), parallel_chunk_size=chunk)
            if heads:
                # Each head feeds one loss, so the gradient of the sum is that task's own gradient.
                torch.autograd.backward(torch.stack(tensors).sum(), inputs=heads)
        weights = jac_to_grad(params, self.aggregator_)
        if weights is None:
            return {}
        out = {t: 0.0 for t in names}
        out.update(zip(active, weights.detach().cpu().tolist()))
        return out

    def _check_active(self, active: list[str]) -> None:
        """Hook: refuse a set of tasks the aggregator cannot handle."""
