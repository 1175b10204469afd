"""Dotted-key access to nested config dictionaries (``train.optimizer.lr``) for overrides: quick
mode, experiment arms and applications. One implementation, shared with the grids."""
from __future__ import annotations

from medmtl.grid._expand import set_dotted as _set_dotted


def set_dotted(d: dict, key: str, value) -> None:
    """Set ``d[a][b][c] = value`` for ``key = "a.b.c"``; the parents must exist (a typo in a parent
    is an error naming the keys that do exist, never a new branch no component reads)."""
    _set_dotted(d, key, value, what="override")
