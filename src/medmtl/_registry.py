"""A small named registry, one per family of strategies (readers, samplers, presets, ...).

Modelled on timm's ``register_model``/``list_models`` and Lightning Fabric's strategy registry:
duplicates are refused unless ``override=True`` and an unknown name lists the available ones.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    """Maps a lowercase name to a factory plus free-form metadata flags."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, *, override: bool = False, **meta: Any) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and not override:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {self._entries[name]!r}; "
                    "pass override=True to replace it"
                )
            self._entries[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"{name!r} is not a registered {self.kind}; choose one of "
                f"{sorted(self._entries)}{did_you_mean(name, self._entries)}"
            ) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
