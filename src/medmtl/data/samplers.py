"""Multi-task samplers: which dataset index comes next, given the task of every item.

Every sampler sees only ``task_ids`` (the task of item ``i`` is ``task_ids[i]``) and yields item
indices. The order of an epoch is a pure function of ``(seed, epoch)``, drawn from
``numpy.random.default_rng([seed, epoch])``, so a resumed run replays the same order without
touching any global random state. ``state_dict()`` also records how many indices of the current
epoch were yielded, and ``iter()`` after ``load_state_dict`` continues from the next one.

Example:
    >>> sampler = create_sampler("cyclic", [0, 0, 1, 1, 1], num_samples=4, seed=0)
    >>> [int(t) for t in np.asarray([0, 0, 1, 1, 1])[list(sampler)]]
    [0, 1, 0, 1]
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from medmtl._registry import Registry

__all__ = ["SAMPLERS", "BalancedSampler", "CyclicSampler", "MultiTaskSampler", "ProportionalSampler"]

@dataclass(frozen=True)
class SamplerInfo:
    """``task_share``: how often each task is drawn, ``"uniform"`` or ``"proportional"`` to its size."""

    task_share: str
    paper: str | None = None


SAMPLERS: Registry[type["MultiTaskSampler"]] = Registry("sampler", SamplerInfo)


def check_task_ids(task_ids) -> np.ndarray:
    """``task_ids`` as a non-empty 1-D int64 array, or a ValueError saying what was given."""
    arr = np.asarray(task_ids)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"task_ids must be a non-empty 1-D array with one task per item; got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"task_ids must hold integers; got dtype {arr.dtype}")
    return arr.astype(np.int64)


def check_count(value, name: str, *, minimum: int) -> int:
    """An integer ``>= minimum`` (bools refused, they are ints by accident)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")
    return int(value)


def cycled_permutations(rng: np.random.Generator, items: np.ndarray, count: int) -> np.ndarray:
    """``count`` draws from ``items`` without replacement, reshuffled each time they run out.

    Every item appears once before any appears twice, so a small task is covered evenly
    rather than by luck.
    """
    rounds = -(-count // len(items))
    return np.concatenate([rng.permutation(items) for _ in range(rounds)])[:count]


class MultiTaskSampler(Sampler[int]):
    """Base class: bookkeeping for epoch, position and state; subclasses define ``_order``.

    Unlike the scikit-learn estimator contract that medmtl follows elsewhere, ``__init__``
    validates its arguments: a sampler has no ``fit`` step, and a bad epoch length would otherwise
    surface only once the training loop first iterates, after the model has been built.

    Args:
        task_ids: int array (N,), the task of each dataset item ``0..N-1``.
        num_samples: indices per epoch; ``None`` means N.
        seed: non-negative integer; with the epoch it fixes the order.

    Raises:
        ValueError: ``task_ids`` is empty, not 1-D or not integer; ``num_samples`` or ``seed`` is
            not a valid count.
    """

    def __init__(self, task_ids, num_samples: int | None = None, seed: int = 0):
        super().__init__()
        self.task_ids = task_ids
        self.num_samples = num_samples
        self.seed = seed
        self._tasks = check_task_ids(task_ids)
        self._num_samples = (len(self._tasks) if num_samples is None
                             else check_count(num_samples, "num_samples", minimum=1))
        self._seed = check_count(seed, "seed", minimum=0)
        self._epoch = 0
        self._position = 0

    @property
    def epoch(self) -> int:
        """The epoch whose order ``iter()`` yields."""
        return self._epoch

    @property
    def position(self) -> int:
        """How many indices of the current epoch have been yielded."""
        return self._position

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``iter()`` yields.

        A new epoch starts at its first index. Setting the epoch already current keeps the
        position, so a loop that calls ``set_epoch(e)`` at the top of every epoch still resumes
        mid-epoch after ``load_state_dict``.
        """
        epoch = check_count(epoch, "epoch", minimum=0)
        if epoch != self._epoch:
            self._epoch, self._position = epoch, 0

    def __len__(self) -> int:
        return self._num_samples

    def __iter__(self) -> Iterator[int]:
        # A finished epoch iterated again replays it from the start (as DistributedSampler does
        # without set_epoch) rather than yielding nothing, which would silently skip training.
        if self._position >= self._num_samples:
            self._position = 0
        order = self._order(np.random.default_rng([self._seed, self._epoch]))
        for i in range(self._position, self._num_samples):
            self._position = i + 1
            yield int(order[i])

    def _order(self, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fingerprint(self) -> str:
        return hashlib.sha1(self._tasks.tobytes()).hexdigest()

    def state_dict(self) -> dict[str, Any]:
        """Seed, epoch and position, plus what must match for the replay to be the same order.

        ``position`` counts indices handed out by ``iter()``. A ``DataLoader`` with workers fetches
        ahead of the batches the loop has consumed, so an engine that resumes after a kill should
        overwrite ``position`` with the number of samples it actually trained on.
        """
        return {
            "sampler": type(self).__name__, "seed": self._seed, "epoch": self._epoch,
            "position": self._position, "num_samples": self._num_samples, "task_ids_sha1": self._fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next ``iter()`` yields the indices not yet yielded.

        Raises:
            ValueError: the state was saved by another sampler class, for another ``num_samples``
                or for other ``task_ids``, so replaying it would not give the same order.
        """
        for key, mine in (("sampler", type(self).__name__), ("num_samples", self._num_samples),
                          ("task_ids_sha1", self._fingerprint())):
            if state.get(key) != mine:
                raise ValueError(f"state_dict[{key!r}]={state.get(key)!r} does not match this sampler's {mine!r}; "
                                 "resume with the sampler, num_samples and task_ids the state was saved with")
        self._seed = check_count(state["seed"], "state_dict['seed']", minimum=0)
        self._epoch = check_count(state["epoch"], "state_dict['epoch']", minimum=0)
        self._position = check_count(state["position"], "state_dict['position']", minimum=0)
        if self._position > self._num_samples:
            raise ValueError(f"state_dict['position']={self._position} exceeds num_samples={self._num_samples}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_items={len(self._tasks)}, num_samples={self._num_samples}, seed={self._seed})"


@SAMPLERS.register("balanced", task_share="uniform", paper="Mormont, Geurts & Maree, IEEE JBHI 2020, section IV-B")
class BalancedSampler(MultiTaskSampler):
    """Task-balanced sampling of the multi-task pre-training study (Mormont et al. 2020, IV-B).

    Each draw picks a task uniformly at random, then an item of that task, so every task is seen
    equally often whatever its size. Within a task, items come from a shuffled permutation that
    is reshuffled when exhausted (the paper leaves this open; it keeps a small task's coverage even).
    """

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        names = np.unique(self._tasks)
        draws = rng.integers(len(names), size=self._num_samples)
        order = np.empty(self._num_samples, dtype=np.int64)
        for k, name in enumerate(names):
            slots = np.flatnonzero(draws == k)
            if slots.size:
                order[slots] = cycled_permutations(rng, np.flatnonzero(self._tasks == name), slots.size)
        return order


@SAMPLERS.register("proportional", task_share="proportional")
class ProportionalSampler(MultiTaskSampler):
    """Plain shuffling of all items: tasks appear in proportion to their size.

    Each pass is a permutation of all N items; when ``num_samples > N`` passes are concatenated,
    so no item appears twice before every item appeared once.
    """

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        return cycled_permutations(rng, np.arange(len(self._tasks)), self._num_samples)


@SAMPLERS.register("cyclic", task_share="uniform")
class CyclicSampler(MultiTaskSampler):
    """Round-robin over tasks (sorted task ids: t0, t1, t2, t0, ...).

    Each task's items follow a shuffled order reshuffled when exhausted, so consecutive indices
    always belong to different tasks (when there are several) and a batch of size B holds
    ``B // T`` or ``B // T + 1`` items of every task.
    """

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        names = np.unique(self._tasks)
        order = np.empty(self._num_samples, dtype=np.int64)
        for k, name in enumerate(names):
            count = len(range(k, self._num_samples, len(names)))
            if count:
                order[k::len(names)] = cycled_permutations(rng, np.flatnonzero(self._tasks == name), count)
        return order


def create_sampler(name: str, task_ids, *, num_samples: int | None = None, seed: int = 0) -> MultiTaskSampler:
    """The registered sampler ``name`` over ``task_ids`` (the one door to a sampler)."""
    return SAMPLERS.get(name, "data.sampler")(task_ids, num_samples=num_samples, seed=seed)
