"""The multi-task network: a trunk (shared, or one per head) and heads fed only their labelled rows.

Batches mix tasks at the sample level (``medmtl.data.dataset``), so most rows carry labels for
only some tasks. ``MultiTaskModel.forward`` routes: each head runs on the rows where at least one
of its tasks is labelled, and a head with no such row is not called at all, so its parameters get
no gradient (``.grad`` stays ``None``) instead of a zero one that momentum or weight decay would
still act on.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import nn

from medmtl.errors import ConfigError
from medmtl.models.heads import Features, Head, to_probabilities
from medmtl.models.heads.build import DEFAULT_HEADS, build_heads

__all__ = ["DEFAULT_HEADS", "MultiTaskModel", "build_heads", "trunk_features"]

SHARING = ("hard", "soft")

Outputs = dict[str, tuple[torch.Tensor, torch.Tensor]]


class MultiTaskModel(nn.Module):
    """Trunk + heads with per-head routing of the labelled rows, under hard or soft sharing.

    Hard sharing (Caruana 1997; Obonyo & Ruiru 2019, Samala et al. 2017, Fang et al. 2019,
    Mormont et al. 2020): one trunk runs once on the whole batch and each head reads its rows.
    Soft sharing: one trunk per head (a copy of ``trunk``, or ``trunk_factory()``), each run on
    its head's rows only, tied by an L2 penalty between corresponding parameters
    (:meth:`sharing_penalty`). The trunks are keyed by head rather than by task because a
    multi-task head (``aux_conditioned``) couples its tasks and needs them on one feature vector;
    with the default one-head-per-task setup this is one trunk per task.

    Args:
        trunk: a :class:`~medmtl.models.trunks.Trunk` (``forward`` pooled, ``forward_pyramid``).
            May be ``None`` when ``trunk_factory`` is given.
        heads: ``{head name: Head}`` (dict or ``nn.ModuleDict``); every task is served by one head.
        tasks: the task specs (``name``, ``kind``, ...), in order.
        sharing: ``"hard"`` or ``"soft"``.
        soft_weight: weight of the soft-sharing penalty.
        trunk_factory: zero-argument callable building a fresh trunk (soft sharing: one per head;
            hard sharing: used only when ``trunk`` is ``None``).

    Raises:
        ValueError: unknown ``sharing``; a task served by no head or by two; a head serving a task
            not in ``tasks``; no trunk; soft-sharing trunks whose parameters do not correspond.

    Example:
        >>> out = model(batch["image"], batch["label_mask"])          # doctest: +SKIP
        >>> logits, rows = out["busi_cls"]                            # doctest: +SKIP
    """

    def __init__(self, trunk: nn.Module | None, heads: Mapping[str, Head] | nn.ModuleDict, tasks: list,
                 sharing: str = "hard", soft_weight: float = 1e-3,
                 trunk_factory: Callable[[], nn.Module] | None = None):
        super().__init__()
        self.sharing = sharing
        self.soft_weight = soft_weight
        self.trunk_factory = trunk_factory
        if sharing not in SHARING:
            raise ConfigError(f"sharing={sharing!r} is not supported; choose one of {list(SHARING)}")
        if trunk is None and trunk_factory is None:
            raise ConfigError("MultiTaskModel needs a trunk or a trunk_factory; got neither")
        self.tasks = {t.name: t for t in tasks}
        self.heads = heads if isinstance(heads, nn.ModuleDict) else nn.ModuleDict(dict(heads))
        self.head_of = check_heads_cover_tasks(self.heads, list(self.tasks))
        if sharing == "hard":
            self.trunk = trunk if trunk is not None else trunk_factory()
        else:
            self.trunk = None
            self.trunks = nn.ModuleDict({h: trunk_factory() if trunk_factory else copy.deepcopy(trunk)
                                         for h in self.heads})
            check_corresponding_parameters(self.trunks)

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, label_mask: Mapping[str, torch.Tensor] | None = None,
                with_penalty: bool = False):
        """Run every head on its routed rows.

        Args:
            x: images (B, C, H, W).
            label_mask: ``{task: bool (B,)}``; a task missing from it has no labelled row. ``None``
                (inference) routes every row to every head.
            with_penalty: also return :meth:`sharing_penalty`, computed here so that DDP finds
                every trunk in the forward's graph (one that got no rows in this batch would
                otherwise be marked unused and then receive the penalty's gradient twice).

        Returns:
            ``{task: (output, rows)}`` (and the penalty, with ``with_penalty``) where ``rows`` (long,
            on ``x``'s device) are the batch rows ``output`` covers, in batch order: the rows
            labelled for that task (every row when ``label_mask`` is None). A head serving several
            tasks runs on the rows any of them labels (its tasks' outputs may depend on each
            other); each task then gets its own rows. Tasks without a labelled row are absent.
        """
        routes = self.route(label_mask, x.shape[0], x.device)
        out = self._forward_hard(x, routes) if self.sharing == "hard" else self._forward_soft(x, routes)
        out = out if label_mask is None else _own_rows(out, label_mask)
        return (out, self.sharing_penalty()) if with_penalty else out

    def route(self, label_mask: Mapping[str, torch.Tensor] | None, batch_size: int,
              device: torch.device) -> dict[str, torch.Tensor]:
        """``{head: rows}`` for the heads with at least one routed row (see :meth:`forward`)."""
        if label_mask is None:
            rows = torch.arange(batch_size, device=device)
            return {h: rows for h in self.heads}
        routes = {}
        for h, head in self.heads.items():
            any_label = torch.zeros(batch_size, dtype=torch.bool, device=device)
            for task in head.task_names:
                if task in label_mask:
                    any_label |= _check_mask(label_mask[task], task, batch_size).to(device)
            rows = any_label.nonzero().flatten()
            if rows.numel():
                routes[h] = rows
        return routes

    def _forward_hard(self, x: torch.Tensor, routes: dict[str, torch.Tensor]) -> Outputs:
        if not routes:
            return {}
        feats = trunk_features(self.trunk, x, any(self.heads[h].needs_pyramid for h in routes))
        out: Outputs = {}
        for h, rows in routes.items():
            head_feats = feats if rows.numel() == x.shape[0] else feats.select(rows)
            out.update({task: (o, rows) for task, o in self.heads[h](head_feats).items()})
        return out

    def _forward_soft(self, x: torch.Tensor, routes: dict[str, torch.Tensor]) -> Outputs:
        out: Outputs = {}
        for h, rows in routes.items():
            xs = x if rows.numel() == x.shape[0] else x[rows]
            feats = trunk_features(self.trunks[h], xs, self.heads[h].needs_pyramid)
            out.update({task: (o, rows) for task, o in self.heads[h](feats).items()})
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-task probabilities for every row, in evaluation mode (the mode is restored after).

        Softmax for binary/multiclass/ordinal, sigmoid for multilabel and segmentation
        (B, 1, H, W); detection gives (B, 5): box fractions x0, y0, x1, y1 and the objectness
        probability.
        """
        was_training = self.training
        self.eval()
        try:
            out = self(x)
        finally:
            self.train(was_training)
        return {task: to_probabilities(self.tasks[task].kind, o) for task, (o, _) in out.items()}

    # -- parameters -------------------------------------------------------------------------
    def trunk_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trunk (hard) or of every per-head trunk (soft)."""
        trunks = [self.trunk] if self.sharing == "hard" else list(self.trunks.values())
        return [p for t in trunks for p in t.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of every head (the engine gives them the head learning-rate multiplier)."""
        return list(self.heads.parameters())

    def sharing_penalty(self) -> torch.Tensor:
        """Soft-sharing penalty; a zero scalar under hard sharing.

        ``soft_weight * sum_{i<j} ||theta_i - theta_j||^2`` over every pair of trunks, summed over
        corresponding parameters (buffers such as BN statistics are not learned, so not tied).
        Computed as ``T * sum_i ||theta_i - mean||^2``, which equals the pairwise sum exactly and
        costs one pass per parameter instead of T^2 / 2. The pairwise form is kept (not the
        distance to the mean alone) so that two trunks give the plain ``||theta_1 - theta_2||^2``.
        """
        if self.sharing == "hard" or len(self.trunks) < 2:
            return next(self.parameters()).new_zeros(())
        named = [dict(t.named_parameters()) for t in self.trunks.values()]
        total = 0.0
        for name in named[0]:
            stack = torch.stack([params[name] for params in named])
            total = total + ((stack - stack.mean(dim=0)) ** 2).sum()
        return self.soft_weight * len(named) * total


def trunk_features(trunk: nn.Module, x: torch.Tensor, need_pyramid: bool) -> Features:
    """Pooled features, plus the pyramid when a head needs it (one trunk pass either way).

    With the pyramid, the pooled vector is the mean of its last map, which is what
    ``Trunk.forward`` computes, so both paths give the heads the same features.
    """
    if need_pyramid:
        pyramid = trunk.forward_pyramid(x)
        return Features(pyramid[-1].mean(dim=(2, 3)), pyramid, tuple(x.shape[-2:]))
    return Features(trunk(x), None, tuple(x.shape[-2:]))


def _own_rows(out: Outputs, label_mask: Mapping[str, torch.Tensor]) -> Outputs:
    """Each task's output restricted to the rows it labels (a shared head ran on the union)."""
    own: Outputs = {}
    for task, (output, rows) in out.items():
        if task not in label_mask:
            continue
        keep = torch.as_tensor(label_mask[task]).to(rows.device)[rows].bool()
        if bool(keep.all()):
            own[task] = (output, rows)
        elif bool(keep.any()):
            own[task] = (output[keep], rows[keep])
    return own


def _check_mask(mask: torch.Tensor, task: str, batch_size: int) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.shape != (batch_size,):
        raise ConfigError(f"label_mask[{task!r}] must have shape ({batch_size},) for a batch of {batch_size}; "
                         f"got {tuple(mask.shape)}")
    return mask.bool()


def check_heads_cover_tasks(heads: nn.ModuleDict, tasks: list[str]) -> dict[str, str]:
    """``{task: head name}``; every task has exactly one head and every head's tasks are known.

    Raises:
        ValueError: a task with no head or two, or a head serving an unknown task.
    """
    head_of: dict[str, str] = {}
    for h, head in heads.items():
        for task in head.task_names:
            if task not in tasks:
                raise ConfigError(f"head {h!r} serves task {task!r}, which is not one of the model's tasks {tasks}")
            if task in head_of:
                raise ConfigError(f"task {task!r} is served by two heads, {head_of[task]!r} and {h!r}")
            head_of[task] = h
    missing = [t for t in tasks if t not in head_of]
    if missing:
        raise ConfigError(f"tasks {missing} have no head; heads serve {sorted(head_of)}")
    return head_of


def check_corresponding_parameters(trunks: nn.ModuleDict) -> None:
    """Soft sharing ties parameters by name, so every trunk must have the same names and shapes."""
    shapes = [{n: p.shape for n, p in t.named_parameters()} for t in trunks.values()]
    for name, s in zip(trunks, shapes):
        if s != shapes[0]:
            raise ConfigError(f"soft sharing needs trunks with corresponding parameters; the trunk of head {name!r} "
                             f"differs from the first one's (check trunk_factory builds one architecture)")
