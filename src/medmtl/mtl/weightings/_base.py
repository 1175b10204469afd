"""The weighting contract, its registry and the checks every weighting shares.

A weighting turns the per-task losses of one batch into the update of the shared trunk. Two kinds
exist, told apart by the registry flag ``needs_per_task_grads``:

* loss-based weightings (``forward``) return one scalar to backpropagate and the weight given to
  each task;
* gradient-based weightings (``backward``) look at every task's gradient on the shared parameters
  (the Jacobian) and write the aggregated update into ``.grad`` themselves.

Every registry entry carries the flags ``needs_per_task_grads``, ``stateful`` (state changes during
training and is saved in ``state_dict``), ``needs_labels`` (``setup`` needs ``train_labels``),
``has_parameters`` (the optimiser must include ``weighting.parameters()``) and ``extra`` (the pip
requirement it needs beyond medmtl's own dependencies, or ``None``). The engine branches on these
flags, never on a weighting's name.

Lifecycle: ``create_weighting(name, **hyper)`` -> ``setup(tasks, train_labels)`` (once, before the
optimiser is built, because ``setup`` creates learnable parameters and buffers) -> optionally
``load_state_dict`` to resume -> ``forward``/``backward`` every step -> ``epoch_end`` every epoch.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from medmtl._registry import Registry, did_you_mean
from medmtl.errors import ConfigError

__all__ = ["WEIGHTINGS", "Weighting", "WeightingInfo", "check_weighting_kwargs", "create_weighting"]

log = logging.getLogger("medmtl.mtl")

@dataclass(frozen=True)
class WeightingInfo:
    """``needs_per_task_grads``: it combines per-task gradients (TorchJD), so the engine backpropagates
    each task separately; ``stateful``: it keeps state across steps (saved in checkpoints);
    ``needs_labels``: it reads the training labels at set-up (``spearman``); ``has_parameters``: it
    learns parameters of its own (optimised with the model); ``extra``: the pip extra it needs."""

    needs_per_task_grads: bool
    stateful: bool
    needs_labels: bool
    has_parameters: bool
    extra: str | None = None


WEIGHTINGS: Registry[type["Weighting"]] = Registry("weighting", WeightingInfo)


class Weighting(nn.Module):
    """Base class of every multi-task loss weighting.

    Subclasses store their hyper-parameters in ``__init__`` unchanged (no validation, no work),
    build whatever depends on the tasks in ``_setup`` and keep learned state in attributes,
    buffers or parameters whose names end in ``_``.

    Attributes:
        tasks_: Task names in the order given to ``setup``; every per-task tensor follows it.
        roles_: ``{task: "main" | "auxiliary"}``.
    """

    # -- life cycle ---------------------------------------------------------------------------
    def setup(self, tasks: Sequence[Any], train_labels: Mapping[str, Any] | None = None) -> "Weighting":
        """Prepare for training on ``tasks``; call once, before building the optimiser.

        Args:
            tasks: Task specs with ``.name``, ``.role`` (``"main"``/``"auxiliary"``), ``.loss_weight``
                and ``.kind`` (``medmtl.data.pipeline.TaskSpec`` or anything shaped like it).
            train_labels: ``{task: int array}`` over one common set of training images, ``-1`` where
                a task has no label. Only weightings flagged ``needs_labels`` read it.

        Returns:
            ``self``, set up.

        Raises:
            ValueError: if ``tasks`` is empty or names a task twice, or a hyper-parameter does not
                fit the tasks (the message names it).
        """
        tasks = list(tasks)
        names = [str(t.name) for t in tasks]
        if not names:
            raise ConfigError(f"{type(self).__name__}.setup(tasks=[]): a weighting needs at least one task")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{type(self).__name__}.setup: task names must be unique; {dupes} appear more than once")
        self.tasks_ = names
        self.roles_ = {str(t.name): str(getattr(t, "role", "main")) for t in tasks}
        self._setup(tasks, train_labels)
        return self

    def _setup(self, tasks: list, train_labels: Mapping[str, Any] | None) -> None:
        """Hook for subclasses: everything that depends on the tasks."""

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, int] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        """Combine per-task losses into the total to backpropagate.

        Args:
            losses: ``{task: scalar loss}``, each already averaged over that task's samples in the
                batch. Tasks without a sample in the batch may be left out.
            counts: ``{task: samples in the batch}``; only ``mean`` reads it.

        Returns:
            ``(total, weights)``: the scalar to backpropagate and ``{task: weight}`` for the tasks in
            ``losses``.
        """
        raise NotImplementedError

    def backward(self, losses: Mapping[str, Tensor], shared_params: Sequence[Tensor],
                 shared_features: Tensor | Sequence[Tensor] | None = None,
                 counts: Mapping[str, int] | None = None) -> dict[str, float]:
        """Backpropagate ``losses``, leaving the update in ``.grad`` (accumulated, like ``Tensor.backward``).

        Loss-based weightings backpropagate ``forward``'s total; gradient-based ones override this.

        Args:
            losses: ``{task: scalar loss}`` as for ``forward``.
            shared_params: The trunk parameters every task updates.
            shared_features: The last shared representation, when the caller has it (gradient-based
                weightings then differentiate through the trunk once instead of once per task).
            counts: ``{task: samples in the batch}``, passed on to ``forward``.

        Returns:
            ``{task: weight}``, or ``{}`` when the weighting has none to report.
        """
        total, weights = self(losses, counts=counts)
        total.backward()
        return weights

    def epoch_end(self, epoch: int, epoch_losses: Mapping[str, float]) -> None:
        """Called after every training epoch with each task's average training loss.

        Args:
            epoch: Index of the epoch that just ended (as the engine counts them).
            epoch_losses: ``{task: average training loss}``; NaN for a task unseen that epoch.
        """

    # -- scikit-learn style introspection ----------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` keyword arguments, as given (a fresh ``type(w)(**w.get_params())`` is a clone)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())

    # -- shared checks --------------------------------------------------------------------------
    def _check_is_setup(self) -> None:
        if not hasattr(self, "tasks_"):
            raise RuntimeError(f"{type(self).__name__} is not set up; call .setup(tasks, train_labels) before using it")

    def _check_losses(self, losses: Mapping[str, Tensor]) -> list[str]:
        """Names of the tasks present in ``losses``, in ``tasks_`` order, after checking each is a scalar."""
        self._check_is_setup()
        unknown = [k for k in losses if k not in self.roles_]
        if unknown:
            raise ConfigError(f"losses name tasks {sorted(unknown)} that were not given to setup(); "
                             f"known tasks: {self.tasks_}{did_you_mean(unknown[0], self.tasks_)}")
        if not losses:
            raise ConfigError("losses is empty; pass at least one task's loss")
        for k, v in losses.items():
            if not isinstance(v, Tensor) or v.ndim != 0:
                shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ConfigError(f"losses[{k!r}] must be a scalar tensor (the task's mean loss); got {shape}")
        return [t for t in self.tasks_ if t in losses]


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float | Tensor]) -> Tensor:
    """``sum_k weights[k] * losses[k]`` over ``weights``' keys, skipping zero weights.

    Zero-weight tasks are skipped rather than multiplied so that a NaN loss of a task that is meant
    to be ignored cannot poison the total (0 * NaN is NaN).
    """
    terms = [losses[k] * w for k, w in weights.items()
             if not (isinstance(w, (int, float)) and w == 0)]
    if not terms:
        return next(iter(losses.values())) * 0.0
    return torch.stack(terms).sum()


def check_task_dict(value: Mapping[str, Any] | None, name: str, allowed: Sequence[str]) -> dict[str, float]:
    """A ``{task: non-negative finite float}`` dict whose keys are all in ``allowed``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping {{task: weight}}; got {type(value).__name__}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise ConfigError(f"{name} names {sorted(unknown)}, which are not among the tasks {list(allowed)}"
                         f"{did_you_mean(unknown[0], allowed)}")
    out = {}
    for k, v in value.items():
        v = float(v)
        if not (v >= 0 and v < float("inf")):
            raise ConfigError(f"{name}[{k!r}]={v!r}: weights must be finite and >= 0")
        out[k] = v
    return out


def create_weighting(weighting: str | Weighting, *, where: str = "train.weighting", **kwargs: Any) -> Weighting:
    """Build a registered weighting from its name and hyper-parameters (or pass one through).

    Args:
        weighting: A registered name (see ``WEIGHTINGS.list()``) or a ``Weighting`` instance.
        **kwargs: The weighting's ``__init__`` hyper-parameters.

    Returns:
        The weighting, not yet set up.

    Raises:
        UnknownNameError: if the name is not registered (the message lists the registered ones).
        ConfigError: if a keyword is not a hyper-parameter of that weighting.

    Example:
        >>> w = create_weighting("main_aux", m=0.7)
        >>> w.get_params()
        {'m': 0.7, 'aux_weights': None}
    """
    if isinstance(weighting, Weighting):
        if kwargs:
            raise ConfigError(f"hyper-parameters {sorted(kwargs)} were given with an already built {weighting!r}; "
                             "pass the name instead, or set them when building it")
        return weighting
    cls = WEIGHTINGS.get(weighting, f"{where}.name")
    check_weighting_kwargs(weighting, kwargs, where)
    return cls(**kwargs)


def check_weighting_kwargs(name: str, kwargs: Mapping[str, Any], where: str = "train.weighting") -> None:
    """Refuse a keyword that is not a hyper-parameter of the registered weighting ``name``."""
    allowed = WEIGHTINGS.get(name, f"{where}.name")._param_names()
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}.kwargs: weighting {name!r} has no hyper-parameter {unknown[0]!r}; it accepts "
                          f"{allowed}{did_you_mean(unknown[0], allowed)}")
