"""Optimisers with parameter groups, freezing, warm-up, batch-norm adaptation, grad rescaling."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from medmtl._registry import Registry
from medmtl.errors import ConfigError

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def param_groups(model, opt_cfg, weighting: nn.Module | None = None) -> list[dict]:
    """Trunk at ``trunk_lr`` (or ``lr``), heads at ``lr * head_lr_mult`` (tau), weighting params at ``lr``."""
    trunk_lr = opt_cfg.trunk_lr if opt_cfg.trunk_lr is not None else opt_cfg.lr
    groups = [
        {"name": "trunk", "params": [p for p in model.trunk_parameters()], "lr": trunk_lr},
        {"name": "heads", "params": [p for p in model.head_parameters()], "lr": opt_cfg.lr * opt_cfg.head_lr_mult},
    ]
    if weighting is not None and any(True for _ in weighting.parameters()):
        groups.append({"name": "weighting", "params": list(weighting.parameters()), "lr": opt_cfg.lr,
                       "weight_decay": 0.0})
    for g in groups:
        g["initial_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


@dataclass(frozen=True)
class OptimizerInfo:
    """``momentum``: the optimiser reads ``train.optimizer.momentum`` (Adam's betas are its own)."""

    momentum: bool


@dataclass(frozen=True)
class SchedulerInfo:
    """``monitored``: stepped with the monitored validation value instead of the epoch."""

    monitored: bool


OPTIMIZERS: Registry = Registry("optimizer", OptimizerInfo)
SCHEDULERS: Registry = Registry("scheduler", SchedulerInfo)


@OPTIMIZERS.register("sgd", momentum=True)
def _sgd(groups: list[dict], opt_cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=opt_cfg.lr, momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay)


@OPTIMIZERS.register("adam", momentum=False)
def _adam(groups: list[dict], opt_cfg) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)


@OPTIMIZERS.register("adamw", momentum=False)
def _adamw(groups: list[dict], opt_cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)


def build_optimizer(groups: list[dict], opt_cfg) -> torch.optim.Optimizer:
    """The registered optimiser ``opt_cfg.name`` over parameter ``groups`` (the one factory)."""
    return OPTIMIZERS.get(opt_cfg.name, "train.optimizer.name")(groups, opt_cfg)


@SCHEDULERS.register("none", monitored=False)
def _constant(optimizer, sched_cfg, epochs: int, mode: str):
    return None


@SCHEDULERS.register("step", monitored=False)
def _step(optimizer, sched_cfg, epochs: int, mode: str):
    return torch.optim.lr_scheduler.StepLR(optimizer, sched_cfg.step_size, sched_cfg.gamma)


@SCHEDULERS.register("multistep", monitored=False)
def _multistep(optimizer, sched_cfg, epochs: int, mode: str):
    if not sched_cfg.milestones:
        raise ConfigError("train.scheduler.milestones: 'multistep' needs the epochs at which the rate drops, "
                          "e.g. [50, 75]")
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, sched_cfg.milestones, sched_cfg.gamma)


@SCHEDULERS.register("cosine", monitored=False)
def _cosine(optimizer, sched_cfg, epochs: int, mode: str):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=sched_cfg.min_lr)


@SCHEDULERS.register("plateau", monitored=True)
def _plateau(optimizer, sched_cfg, epochs: int, mode: str):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=sched_cfg.gamma,
                                                      patience=sched_cfg.patience, min_lr=sched_cfg.min_lr)


def build_scheduler(optimizer, sched_cfg, epochs: int, mode: str = "max"):
    """Epoch-level schedule (None for ``none``); ``plateau`` is stepped with the monitored validation value."""
    return SCHEDULERS.get(sched_cfg.name, "train.scheduler.name")(optimizer, sched_cfg, epochs, mode)


def set_bn_eval(module: nn.Module) -> None:
    """Batch norms of ``module`` stop updating their running statistics."""
    for m in module.modules():
        if isinstance(m, _BN):
            m.eval()


def freeze_stages(trunk, k: int) -> list[nn.Parameter]:
    """Freeze the first ``k`` trunk stages (weights and batch-norm statistics); returns the frozen params."""
    stages = trunk.stages()
    if k > len(stages):
        raise ConfigError(f"train.freeze_stages={k} but the trunk has {len(stages)} stages")
    frozen = []
    for stage in stages[:k]:
        for p in stage.parameters():
            p.requires_grad_(False)
            frozen.append(p)
    return frozen


def apply_frozen_bn(trunk, k: int) -> None:
    """Call after ``model.train()``: keeps frozen stages' batch norms in eval mode."""
    for stage in trunk.stages()[:k]:
        set_bn_eval(stage)


@contextmanager
def trunk_frozen(trunks: list[nn.Module]):
    """Warm-up: trunk weights get no gradient and its batch norms keep their statistics."""
    params = [p for t in trunks for p in t.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    for t in trunks:
        set_bn_eval(t)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, batches, forward, average=None) -> int:
    """Re-estimate batch-norm statistics on new data, keeping the network's eval outputs unchanged.

    Statistics learnt on another domain (ImageNet) mis-normalise a new one (Mormont et al. 2020,
    supplementary B). Running mean/var are replaced by the average over ``batches`` and the affine
    parameters are corrected so that y = g (x - mu) / s + b is the same function of x:
    g' = g s'/s and b' = b + g (mu' - mu) / s. Returns the number of layers adapted.

    ``average`` (under DDP: the mean of a tensor over the ranks, each of which saw its own batches)
    pools the statistics before the correction, so every rank ends with the same weights: the
    pooled mean is the mean of the ranks' means, the pooled variance the mean of their second
    moments less its square.
    """
    layers = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats and m.affine]
    old = {m: (m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in layers}
    was_training = model.training
    model.train()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the given batches
    n = 0
    for batch in batches:
        forward(batch)
        n += 1
    if average is not None and n:
        for m in layers:
            mean = average(m.running_mean)
            m.running_var.copy_(average(m.running_var + m.running_mean ** 2) - mean ** 2)
            m.running_mean.copy_(mean)
    for m in layers:
        mu, var, momentum = old[m]
        s_old, s_new = torch.sqrt(var + m.eps), torch.sqrt(m.running_var + m.eps)
        m.bias.add_(m.weight * (m.running_mean - mu) / s_old)
        m.weight.mul_(s_new / s_old)
        m.momentum = momentum
    model.train(was_training)
    return len(layers) if n else 0


def rescale_head_grads(heads: dict, rows_per_head: dict[str, int], batch_size: int) -> None:
    """Multiply each head's gradient by B/|B_i| (Mormont et al., supplementary C).

    With the loss averaged over the whole batch, a head that saw |B_i| of B samples gets a
    gradient |B_i|/B times too small; this restores the per-task average.
    """
    for name, head in heads.items():
        n = rows_per_head.get(name, 0)
        if n == 0:
            continue
        for p in head.parameters():
            if p.grad is not None:
                p.grad.mul_(batch_size / n)
