"""Heads from a config: the default head per task kind, and heads that join several tasks."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from medmtl._registry import check_kwargs, did_you_mean
from medmtl.errors import ConfigError
from medmtl.models.heads._base import HEADS, Head
from medmtl.models.heads._common import CLASSIFICATION_KINDS

DEFAULT_HEADS = {**{k: "linear" for k in CLASSIFICATION_KINDS}, "segmentation": "segmentation", "detection": "box"}


def build_heads(tasks: list, head_cfg: Mapping[str, object] | None, in_features: int,
                feature_info: list[dict]) -> nn.ModuleDict:
    """Build one head per task, or per group of tasks where ``head_cfg`` joins them.

    Each ``head_cfg`` entry ``key: {"name": head, "tasks": [...], **kwargs}`` (a mapping, where the
    hyper-parameters may also sit under ``"kwargs"``, or an object with ``name``/``tasks``/``kwargs``
    attributes such as the config's ``HeadConfig``) builds head ``key`` for
    ``tasks`` (default ``[key]``, so keying by a task name configures that task's head), with
    ``name`` defaulting to the kind's default head. Tasks no entry claims get their kind's default
    head (classification: ``linear``, segmentation: ``segmentation``, detection: ``box``) under
    their own name. Heads come in the order of their first task.

    Example:
        >>> build_heads(specs, {"mias": {"name": "aux_conditioned",                # doctest: +SKIP
        ...     "tasks": ["mias_severity", "mias_tissue", "mias_abnormality"]}}, 512, info)

    Raises:
        KeyError: an unknown head name (the message lists the registered ones).
        ValueError: a head declared for a task kind it does not support (names task, kind and
            head); a task listed twice or unknown (``ConfigError``, a ``ValueError``). An unknown
            hyper-parameter is a ``ConfigError`` naming ``heads.<key>.kwargs``.
    """
    specs = {t.name: t for t in tasks}
    built: dict[str, Head] = {}
    claimed: dict[str, str] = {}
    for key, cfg in (head_cfg or {}).items():
        name, task_names, kwargs = _read_head_cfg(key, cfg)
        if not task_names and key not in specs:
            raise ConfigError(f"heads.{key}: no 'tasks' given, so the key must name a task; {key!r} is not one of "
                              f"{sorted(specs)}{did_you_mean(key, specs)}")
        task_names = list(task_names or [key])
        for t in task_names:
            if t not in specs:
                raise ConfigError(f"heads.{key}.tasks: {t!r} is not a task of this model; choose from {sorted(specs)}")
            if t in claimed:
                raise ConfigError(f"heads.{key}.tasks: task {t!r} already has head {claimed[t]!r}")
            claimed[t] = key
        group = [specs[t] for t in task_names]
        name = name or DEFAULT_HEADS.get(group[0].kind)
        _check_head_kinds(key, name, group)
        built[key] = create_head(name, group, in_features, feature_info, where=f"heads.{key}", **kwargs)
    for spec in tasks:
        if spec.name in claimed:
            continue
        if spec.name in built:
            raise ConfigError(f"heads.{spec.name}: that key names a head for other tasks, but task {spec.name!r} "
                              "also needs its default head under its own name; rename the head key")
        name = DEFAULT_HEADS.get(spec.kind)
        _check_head_kinds(spec.name, name, [spec])
        built[spec.name] = create_head(name, [spec], in_features, feature_info, where=f"heads.{spec.name}")
        claimed[spec.name] = spec.name
    order = list(specs)
    return nn.ModuleDict(sorted(built.items(), key=lambda kv: min(order.index(t) for t in kv[1].task_names)))


HEAD_POSITIONAL = ("tasks", "in_features", "feature_info")   # what build_heads fills in, never a config


def create_head(name: str, tasks: list, in_features: int, feature_info: list[dict], *, where: str = "heads",
                **kwargs) -> Head:
    """The registered head ``name`` for ``tasks`` (the one door to a head); its options are checked
    against the head's ``__init__`` so a misspelled one names ``where`` and the accepted options."""
    return check_head(name, kwargs, where)(tasks, in_features, feature_info, **kwargs)


def check_head(name: str, kwargs, where: str = "heads"):
    """The registered head class ``name`` after checking ``kwargs`` are its options (what both
    :func:`create_head` and the config check use)."""
    cls = HEADS.get(name, f"{where}.name")
    check_kwargs(cls, kwargs, f"{where}.kwargs", skip=HEAD_POSITIONAL)
    return cls


def _read_head_cfg(key: str, cfg) -> tuple[str | None, list[str] | None, dict]:
    """``(name, tasks, kwargs)`` from a mapping (extra keys and a ``kwargs`` mapping are both
    hyper-parameters, so a flattened config and the schema's ``HeadConfig`` shape both work) or
    from an object with ``name``/``tasks``/``kwargs`` attributes."""
    if isinstance(cfg, Mapping):
        kwargs = {k: v for k, v in cfg.items() if k not in ("name", "tasks", "kwargs")}
        nested = dict(cfg.get("kwargs") or {})
        both = sorted(set(kwargs) & set(nested))
        if both:
            raise ConfigError(f"heads.{key}: {both} given both at the top level and under 'kwargs'; keep one")
        return cfg.get("name"), cfg.get("tasks"), {**kwargs, **nested}
    return getattr(cfg, "name", None), getattr(cfg, "tasks", None), dict(getattr(cfg, "kwargs", None) or {})


def _check_head_kinds(key: str, name: str | None, group: list) -> None:
    if name is None:
        raise ConfigError(f"heads.{key}: task kind {group[0].kind!r} has no default head; "
                          f"kinds with one: {sorted(DEFAULT_HEADS)}")
    allowed = HEADS.meta(name).task_types        # UnknownNameError listing the heads
    for t in group:
        if t.kind not in allowed:
            raise ConfigError(f"heads.{key}: task {t.name!r} has kind {t.kind!r}, which head {name!r} does not "
                              f"support; {name!r} serves {sorted(allowed)}")
