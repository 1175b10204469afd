"""Dotted-key access to nested config dictionaries (``train.optimizer.lr``)."""
from __future__ import annotations

from medmtl.errors import ConfigError


def set_dotted(d: dict, key: str, value) -> None:
    """Set ``d[a][b][c] = value`` for ``key = "a.b.c"``; the parents must exist."""
    *parents, last = key.split(".")
    node = d
    for i, part in enumerate(parents):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"override {key!r}: {'.'.join(parents[:i + 1])!r} is not a config section")
        node = node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"override {key!r}: {'.'.join(parents)!r} is not a config section")
    node[last] = value
