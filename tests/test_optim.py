"""Optimisation pieces: parameter groups, head-gradient rescaling, schedules, and every weighting
driving real training steps."""
from __future__ import annotations

import pytest
import torch

from medmtl.engine import optim
from medmtl.engine.loop import Trainer
from medmtl.mtl.weightings import WEIGHTINGS
from tests.test_engine import _cfg, medmnist_data  # noqa: F401  (module-scoped real-data fixture)


def test_param_groups_apply_head_multiplier_and_trunk_lr(tmp_path, shared_cache, medmnist_data):  # noqa: F811
    cfg, _ = _cfg(tmp_path, shared_cache, optimizer={"lr": 0.01, "head_lr_mult": 5, "trunk_lr": 0.001}, epochs=1)
    trainer = Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"trunk": 0.001, "heads": 0.05}
    n_params = sum(len(g["params"]) for g in trainer.optimizer.param_groups)
    assert n_params == len(list(trainer.net.parameters()))


def test_head_gradients_rescaled_by_batch_over_routed_rows():
    heads = {"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)}
    for h in heads.values():
        for p in h.parameters():
            p.grad = torch.ones_like(p)
    optim.rescale_head_grads(heads, {"a": 16, "b": 48}, 64)
    assert torch.all(heads["a"].weight.grad == 4.0) and torch.allclose(heads["b"].weight.grad, torch.full((2, 2), 64 / 48))


def test_grad_rescale_in_a_training_step(tmp_path, shared_cache, medmnist_data):  # noqa: F811
    grads = {}
    for flag in (False, True):
        cfg, _ = _cfg(tmp_path / str(flag), shared_cache, grad_rescale=flag, epochs=1)
        trainer = Trainer(cfg, medmnist_data, tmp_path / str(flag) / "run", progress=False)
        batch = next(iter(trainer.train_loader))
        trainer.optimizer.step = lambda: None        # keep the gradients for inspection
        trainer.train_step(batch)
        grads[flag] = {n: p.grad.clone() for n, p in trainer.net.heads.named_parameters()}
        counts = {t: int(m.sum()) for t, m in batch["label_mask"].items()}
    b = sum(counts.values())
    for name, g in grads[True].items():
        task = "breastmnist" if "breastmnist" in name else "retinamnist"
        torch.testing.assert_close(g, grads[False][name] * b / counts[task])


@pytest.mark.parametrize("name, expected", [
    ({"name": "step", "step_size": 2, "gamma": 0.5}, [0.1, 0.05, 0.05, 0.025]),
    ({"name": "multistep", "milestones": [1, 3], "gamma": 0.1}, [0.01, 0.01, 0.001, 0.001]),
    ({"name": "cosine", "min_lr": 0.0}, [0.1 * (1 + torch.cos(torch.tensor(torch.pi * k / 4)).item()) / 2 for k in (1, 2, 3, 4)]),
])
def test_epoch_schedules(name, expected):
    from medmtl.config.schema import SchedulerConfig

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = optim.build_scheduler(opt, SchedulerConfig(**name), epochs=4)
    seen = []
    for _ in range(4):
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx(expected)


def test_plateau_schedule_lowers_lr_when_monitor_stalls():
    from medmtl.config.schema import SchedulerConfig

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = optim.build_scheduler(opt, SchedulerConfig(name="plateau", patience=1, gamma=0.1), epochs=5, mode="max")
    for auc in (0.6, 0.7, 0.7, 0.7):
        sched.step(auc)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


WEIGHTING_KW = {"fixed": {}, "main_aux": {"m": 0.7}, "spearman": {"alpha": 0.05}}


@pytest.mark.parametrize("name", WEIGHTINGS.list())
def test_every_weighting_trains_on_real_data(name, tmp_path, shared_cache, medmnist_data):  # noqa: F811
    cfg, _ = _cfg(tmp_path, shared_cache, weighting={"name": name, "kwargs": WEIGHTING_KW.get(name, {})}, epochs=1)
    trainer = Trainer(cfg, medmnist_data, tmp_path / "run", progress=False)
    trunk0 = [p.detach().clone() for p in trainer.net.trunk.parameters()]
    losses = []
    for batch, _ in zip(trainer.train_loader, range(3)):
        out, counts, _ = trainer.train_step(batch)
        losses.append(out)
    assert all(torch.isfinite(torch.tensor(list(o.values()))).all() for o in losses)
    moved = [not torch.equal(a, b) for a, b in zip(trunk0, trainer.net.trunk.parameters())]
    assert any(moved), f"{name}: the shared trunk received no update"


def test_multistep_needs_increasing_milestones():
    from medmtl.config.schema import SchedulerConfig
    from medmtl.errors import ConfigError

    with pytest.raises(ValueError, match=r"milestones must be increasing epochs >= 1, got \[75, 50\]"):
        SchedulerConfig(name="multistep", milestones=[75, 50])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="'multistep' needs the epochs at which the rate drops"):
        optim.build_scheduler(opt, SchedulerConfig(name="multistep"), epochs=4)
