"""Dotted-key overrides (``train.optimizer.lr: 0.01``) of a config: quick mode, profiles, experiment
arms, applications, grids and cross-validation folds all change a config through this one module."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from medmtl._registry import did_you_mean
from medmtl.config.loader import parse_config
from medmtl.errors import ConfigError


def split_key(key: Any, what: str = "override") -> list[str]:
    parts = key.split(".") if isinstance(key, str) else []
    if not parts or not all(parts):
        raise ConfigError(f"{what} key {key!r} must be a dotted config path such as 'train.optimizer.lr'")
    return parts


def set_dotted(config: dict, key: str, value: Any, *, what: str = "override") -> None:
    """Set ``config[a][b][c] = value`` for ``key="a.b.c"``, in place.

    The leaf may be new (an unset option), but every parent must already exist: a typo in a
    parent would otherwise create a branch that no component reads, and a grid would silently
    run the same configuration several times.

    Args:
        config: Nested config dict, modified in place.
        key: Dotted path, such as ``train.optimizer.lr``.
        value: Value to store at the leaf.
        what: How error messages name ``key`` (a grid axis, a quick-mode override, ...).

    Raises:
        ConfigError: If a parent of ``key`` is missing or is not a mapping.
    """
    parts = split_key(key, what)
    node = config
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[:depth]) or "the top level"
        if not isinstance(node, dict):
            raise ConfigError(f"{what} {key!r}: {where!r} holds a {type(node).__name__}, not a mapping, "
                              f"so it has no key {part!r}")
        if part not in node:
            raise ConfigError(f"{what} {key!r}: {'.'.join(parts[:depth + 1])!r} does not exist in the base "
                              f"config; keys at {where}: {sorted(node)}{did_you_mean(part, node)}")
        node = node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"{what} {key!r}: {'.'.join(parts[:-1])!r} holds a {type(node).__name__}, "
                          f"not a mapping, so it has no key {parts[-1]!r}")
    node[parts[-1]] = value


def apply_dotted(raw: dict, overrides: Mapping[str, Any], *, what: str = "override") -> dict:
    """``raw`` (a config dict, changed in place) with every dotted override set; returns it."""
    for key, value in overrides.items():
        set_dotted(raw, key, copy.deepcopy(value), what=what)
    return raw


def override_config(cfg, overrides: Mapping[str, Any], where: str, *, edit=None):
    """A new validated config: ``cfg`` dumped, ``edit(raw)`` applied (a callable for changes that
    are not dotted keys, such as narrowing the task list), then ``overrides``, then parsed again, so
    every change meets the same schema as a hand-written file; errors name ``where``."""
    raw = cfg.model_dump(mode="json")
    if edit is not None:
        edit(raw)
    apply_dotted(raw, overrides, what=f"{where}: override")
    return parse_config(raw, where)
