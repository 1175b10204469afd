"""The metric registry and the tables derived from its metadata (which metrics a task kind has)."""
from __future__ import annotations

from dataclasses import dataclass

from medmtl._registry import Registry
from medmtl.kinds import KINDS


@dataclass(frozen=True)
class MetricInfo:
    """``kinds``: the task kinds it is defined for; ``scored``: kinds whose results (validation,
    ``metrics.json``) always carry it; ``tabled``: kinds whose report table shows it; ``default``:
    kinds for which it is the task's ``metric`` unless the config names another; ``threshold``:
    it depends on a decision threshold (0.5 unless given)."""

    kinds: frozenset
    higher_is_better: bool
    scored: frozenset = frozenset()
    tabled: frozenset = frozenset()
    default: frozenset = frozenset()
    threshold: bool = False


METRICS: Registry = Registry("metric", MetricInfo)


def _for(kind: str, flag: str) -> list[str]:
    if kind not in KINDS:
        raise ValueError(f"task kind {kind!r} is not one of {sorted(KINDS)}")
    return [n for n in METRICS.names() if kind in getattr(METRICS.meta(n), flag)]


def scored_metrics(kind: str) -> list[str]:
    """The metrics every result of a task of ``kind`` carries, in registration order."""
    return _for(kind, "scored")


def table_metrics(kind: str) -> list[str]:
    """The metrics the report's comparison table shows for ``kind``."""
    return _for(kind, "tabled")


def default_metric(kind: str) -> str:
    """The metric a task of ``kind`` is selected and compared on unless its config names one."""
    (name,) = _for(kind, "default")
    return name


def compute_metric(name: str, y, scores, **kwargs) -> float:
    """The registered metric ``name`` of targets ``y`` and ``scores`` (the one door to a metric)."""
    return METRICS.get(name, "metric")(y, scores, **kwargs)


def higher_is_better(name: str) -> bool:
    return METRICS.meta(name).higher_is_better
