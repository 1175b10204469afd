"""A small named registry, one per family of components (readers, heads, weightings, ...).

Modelled on timm's ``register_model``/``create_model`` and Lightning Fabric's strategy registry:
duplicates are refused unless ``override=True``, an unknown name lists the available ones with a
close match, and each entry carries typed metadata (a frozen dataclass per family, as timm's
``OptimInfo``), so a misspelled flag is an error when the component registers, never a silent False.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from medmtl.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class UnknownNameError(ConfigError, KeyError):
    """A name that is not registered; a ``ConfigError`` (the CLI prints one line) and a ``KeyError``."""

    __str__ = Exception.__str__   # KeyError would print the message in quotes


@dataclasses.dataclass(frozen=True)
class NoInfo:
    """Metadata of a family that declares none."""


class Registry(Generic[T]):
    """Maps a lowercase name to a factory and its metadata (an instance of ``info``).

    Args:
        kind: What an entry is, for messages (``"head"``, ``"weighting"``).
        info: The frozen dataclass every entry's metadata must be; ``register(name, **fields)``
            builds it, so an unknown field or a missing one fails at registration.
    """

    def __init__(self, kind: str, info: type = NoInfo):
        self.kind = kind
        self.info = info
        self._entries: dict[str, T] = {}
        self._meta: dict[str, Any] = {}

    def register(self, name: str, *, override: bool = False, **meta: Any) -> Callable[[T], T]:
        try:
            info = self.info(**meta)
        except TypeError as exc:
            fields = [f.name for f in dataclasses.fields(self.info)]
            raise TypeError(f"{self.kind} {name!r}: metadata {sorted(meta)} does not fit {self.info.__name__} "
                            f"(fields {fields}): {exc}") from None

        def decorator(obj: T) -> T:
            if name in self._entries and not override:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {self._entries[name]!r}; "
                    "pass override=True to replace it"
                )
            self._entries[name] = obj
            self._meta[name] = info
            return obj

        return decorator

    def check(self, name: str, where: str | None = None) -> str:
        """``name`` if registered, else an :class:`UnknownNameError` naming ``where`` (a config key)."""
        if name in self._entries:
            return name
        prefix = f"{where}: " if where else ""
        raise UnknownNameError(f"{prefix}{name!r} is not a registered {self.kind}; choose one of "
                               f"{self.list()}{did_you_mean(name, self._entries)}")

    def get(self, name: str, where: str | None = None) -> T:
        return self._entries[self.check(name, where)]

    def meta(self, name: str):
        """The entry's metadata (an instance of the registry's ``info`` dataclass)."""
        return self._meta[self.check(name)]

    def where(self, **flags: Any) -> list[str]:
        """Names whose metadata has these field values, in registration order."""
        return [n for n, m in self._meta.items() if all(getattr(m, k) == v for k, v in flags.items())]

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def names(self) -> list[str]:
        """Every name in registration order (what tables derived from metadata follow)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], where: str, *, skip: Iterable[str] = ()) -> None:
    """Refuse keyword arguments that ``fn`` (a class or a function) does not take.

    Args:
        fn: The factory; a class is checked by its ``__init__``. One taking ``**kwargs`` accepts anything.
        kwargs: The keywords a config gives it.
        where: The config key of ``kwargs`` (``model.heads.mias.kwargs``) for the message.
        skip: Positional parameters the factory fills itself (``tasks``, ``in_features``).

    Raises:
        ConfigError: naming the key, the unknown keyword, the accepted ones and a close match.
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [p for p, v in params.items() if p not in ("self", *skip) and v.kind is not v.VAR_POSITIONAL]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"{where}: {key!r} is not an option; it accepts {allowed}{did_you_mean(key, allowed)}")
