"""Plumbing shared by the heads: task-kind groups, the task check and logits-to-probabilities."""
from __future__ import annotations

import torch

from medmtl.errors import ConfigError
from medmtl.kinds import CLASSIFICATION_KINDS, KINDS, SINGLE_LABEL_KINDS
from medmtl.models.heads._base import HEADS

__all__ = ["CLASSIFICATION_KINDS", "check_head_tasks", "to_probabilities"]


def check_head_tasks(head: str, tasks) -> list:
    """Return ``tasks`` as a list after checking the registered head ``head`` supports every kind.

    The allowed kinds are read from the head's registry metadata (``task_types``) so the head,
    ``build_heads`` and the tests share one declaration.

    Raises:
        ValueError: no task, or a task whose kind the head does not serve.
    """
    tasks = list(tasks)
    if not tasks:
        raise ConfigError(f"head {head!r} needs at least one task; got none")
    allowed = HEADS.meta(head).task_types
    for t in tasks:
        if t.kind not in allowed:
            raise ConfigError(f"task {t.name!r} has kind {t.kind!r}, which head {head!r} does not support; "
                             f"it serves {sorted(allowed)}")
    return tasks


def to_probabilities(kind: str, output: torch.Tensor) -> torch.Tensor:
    """Turn one head output of task kind ``kind`` into probabilities (see ``_base`` for formats).

    Softmax for single-label classification, sigmoid for multilabel and segmentation; for
    detection the box fractions are kept and the objectness logit becomes a probability.
    """
    if kind in SINGLE_LABEL_KINDS:
        return output.softmax(dim=1)
    if kind in ("multilabel", "segmentation"):
        return output.sigmoid()
    if kind == "detection":
        return torch.cat([output[:, :4], output[:, 4:].sigmoid()], dim=1)
    raise ConfigError(f"task kind {kind!r} has no probability form; choose one of "
                     f"{sorted(KINDS)}")
