"""Grid expansion: the product of the axes, each point applied to a copy of the base config."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medmtl.config.overrides import set_dotted, split_key
from medmtl.errors import ConfigError


@dataclass(frozen=True)
class Trial:
    """One configuration of a grid.

    Attributes:
        trial_id: Short hash of ``assignment``; names the trial's directory, so it must not change
            when the axes are listed in another order or the grid grows.
        name: Readable form of ``assignment``, such as ``lr=0.01,seed=1``.
        assignment: Axis key (dotted) to the value this trial takes.
        params: The base config with ``assignment`` applied; what the trial function receives.
    """

    trial_id: str
    name: str
    assignment: dict[str, Any]
    params: dict[str, Any]


def expand_grid(base: Mapping[str, Any], axes: Mapping[str, Sequence[Any]]) -> list[Trial]:
    """Every combination of the axis values, in order (the last axis varies fastest).

    Args:
        base: Base config; never modified, each trial gets a deep copy.
        axes: Dotted config key to the list of values it takes. Values must be JSON-serialisable,
            because the trial id hashes them.

    Returns:
        One :class:`Trial` per combination; a single trial with the base config when ``axes`` is empty.

    Raises:
        ConfigError: If ``base`` is not a dict, or an axis is not a non-empty list, repeats a value,
            holds a value that is not JSON-serialisable, or names a key whose parent does not exist in ``base``.
    """
    if not isinstance(base, Mapping):
        raise ConfigError(f"the grid's base config must be a dict (for a parsed config, pass cfg.model_dump()); "
                          f"got {type(base).__name__}")
    if not isinstance(axes, Mapping):
        raise ConfigError(f"grid axes must map dotted config keys to lists of values; got {type(axes).__name__}")
    for key, values in axes.items():
        _check_axis(key, values)
    labels = _labels(list(axes))
    trials = []
    for combo in itertools.product(*axes.values()):
        assignment = dict(zip(axes, combo))
        params = copy.deepcopy(dict(base))
        for key, value in assignment.items():
            set_dotted(params, key, copy.deepcopy(value), what="grid axis")
        name = ",".join(f"{labels[k]}={_show(v)}" for k, v in assignment.items()) or "base"
        trials.append(Trial(trial_id=_trial_id(assignment), name=name, assignment=assignment, params=params))
    return trials


def _check_axis(key: Any, values: Any) -> None:
    split_key(key, "grid axis")
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"grid axis {key!r} must be a non-empty list of values; got {values!r}")
    seen = set()
    for value in values:
        try:
            canonical = _canonical(value)
        except TypeError as err:
            raise ConfigError(f"grid axis {key!r}: value {value!r} is not JSON-serialisable ({err}); "
                              "use numbers, strings, booleans, None, lists or dicts") from None
        if canonical in seen:
            # Two equal values would give two trials with one id, i.e. one directory for two runs.
            raise ConfigError(f"grid axis {key!r} lists the value {value!r} more than once")
        seen.add(canonical)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _trial_id(assignment: dict[str, Any]) -> str:
    # Sorted keys: reordering the axes must not rename (and so rerun) finished trials.
    return hashlib.sha1(_canonical(assignment).encode()).hexdigest()[:12]


def _labels(keys: list[str]) -> dict[str, str]:
    """The last part of each key (``lr``), or the full key where two axes share that last part."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(keys, leaves)}


def _show(value: Any) -> str:
    return value if isinstance(value, str) else _canonical(value)
