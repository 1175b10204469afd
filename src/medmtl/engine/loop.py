"""The training loop, written out in one place (the Fabric pattern: the user-visible loop stays
readable; Fabric owns device placement, precision and DDP).

Each epoch: balanced (or other) task sampling -> routed forward -> per-task losses -> weighting
-> backward -> step; then validation, history, schedule, best/last checkpoints, early stopping.
The last checkpoint holds everything needed to continue after a kill (model, optimiser,
scheduler, sampler, weighting and RNG states), so a resumed run ends with the same weights.
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import pickle
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from tqdm.auto import tqdm

from medmtl.config import parse_config
from medmtl.data.dataset import collate
from medmtl.data.pipeline import prepare
from medmtl.data.samplers import create_sampler
from medmtl.engine import checkpoint as ckpt
from medmtl.engine import optim
from medmtl.engine.build import build_datasets, build_model, task_specs_dict
from medmtl.engine.tracking import log_epoch
from medmtl.engine.validate import monitor_value, monitored_tasks, predict_split, task_metrics
from medmtl.errors import MedmtlError
from medmtl.kinds import SINGLE_LABEL_KINDS
from medmtl.metrics import higher_is_better
from medmtl.mtl.losses import compute_losses
from medmtl.mtl.weightings import WEIGHTINGS, create_weighting

log = logging.getLogger("medmtl.engine")
# one line per epoch (run, epoch, losses, monitor, time): the CLI turns it on when there is no terminal
EPOCH_LOG = "medmtl.engine.epochs"
epoch_log = logging.getLogger(EPOCH_LOG)


class TrainingError(MedmtlError):
    """Training cannot go on (a NaN/Inf loss); the message names the step, task and last checkpoint."""


def epoch_line(run_dir: Path, epoch: int, epochs: int, row: dict, improved: bool) -> str:
    """``arms/stl/seed0 epoch 3/8 (12.3 s): loss pcam 0.512; val auc/pcam 0.874; monitor 0.874 (best)``."""
    where = "/".join(Path(run_dir).parts[-3:])
    losses = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in row.items() if k.startswith("train_loss/"))
    val = ", ".join(f"{k[4:]} {v:.3f}" for k, v in row.items()
                    if k.startswith(("val_auc/", "val_dice/", "val_box_iou/")) and isinstance(v, float))
    monitor = row["monitor"]
    return (f"{where} epoch {epoch}/{epochs} ({row['seconds']:.1f} s): loss {losses}; val {val}; monitor "
            f"{monitor:.3f}{' (best)' if improved else ''}")


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_monitor: float
    val_metrics: dict[str, dict[str, float]]
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    mode: str = "max"             # the monitored metric's direction: "max" or "min"
    selection: dict = field(default_factory=dict)   # the best-epoch decision: tasks read, epochs, choice


def _loader(dataset, cfg, sampler=None):
    # pinned host memory: the copy to a GPU overlaps compute (no effect without one)
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler, shuffle=False,
                                       num_workers=cfg.data.num_workers, collate_fn=collate,
                                       persistent_workers=cfg.data.num_workers > 0,
                                       pin_memory=torch.cuda.is_available())


def _train_labels(data, specs: dict) -> dict[str, np.ndarray]:
    """Labels of every task on the main task's training images (what ``spearman`` correlates)."""
    main = next((t for t, s in specs.items() if s.role == "main"), next(iter(specs)))
    rows = data.rows(main, "train")
    out = {}
    for t, s in specs.items():
        if s.source == specs[main].source and data.labels[t].ndim == 1:
            out[t] = data.labels[t][rows]
    return out


class RankSlice(torch.utils.data.Sampler):
    """Under DDP every rank draws the same task-balanced order and keeps every world-th index,
    so the ranks see disjoint samples and the sampler's resumable state stays one state.

    Every rank gets the same number of indices, ``ceil(n / world)``: the last ranks repeat the
    epoch's first indices to fill up (as ``DistributedSampler`` pads), because a rank with one batch
    fewer would wait forever in the others' gradient all-reduce.
    """

    def __init__(self, sampler, rank: int, world: int):
        self.sampler, self.rank, self.world = sampler, rank, world

    def _remaining(self) -> int:
        """Indices the sampler's next ``iter()`` yields (all of an epoch, or the rest of a resumed one)."""
        n, done = len(self.sampler), getattr(self.sampler, "position", 0)
        return n - done if done < n else n

    def __len__(self) -> int:
        return -(-self._remaining() // self.world)

    def __iter__(self):
        n = self._remaining()
        pad = len(self) * self.world - n
        head = []
        for i, idx in enumerate(self.sampler):
            if len(head) < pad:
                head.append(idx)
            if i % self.world == self.rank:
                yield idx
        for i in range(n, n + pad):
            if i % self.world == self.rank:
                yield head[(i - n) % len(head)]


# -- the loop ---------------------------------------------------------------------------------
class Trainer:
    """Runs one training job into ``run_dir``. Use :func:`fit`."""

    def __init__(self, cfg, data, run_dir: Path, progress: bool = True):
        # lazy: Lightning takes seconds to import; only training needs it
        from lightning.fabric import Fabric

        self.cfg, self.data, self.run_dir, self.progress = cfg, data, Path(run_dir), progress
        tc = cfg.train
        _check_fabric_options(tc, WEIGHTINGS.meta(tc.weighting.name))
        # routing (a head without rows in a batch) and warm-up (a frozen trunk) leave parameters
        # without a gradient in some steps, which plain DDP takes for an error
        strategy = "ddp_find_unused_parameters_true" if tc.devices > 1 else "auto"
        self.fabric = Fabric(accelerator=tc.accelerator, devices=tc.devices, precision=tc.precision,
                             strategy=strategy)
        self.fabric.launch()   # no-op on one device; starts the DDP processes for --devices N
        set_determinism(tc.deterministic)
        self.fabric.seed_everything(cfg.seed, verbose=False)
        self.tasks = [t.name for t in cfg.tasks]
        self.specs = task_specs_dict(data, self.tasks)
        self.train_set, self.val_set = build_datasets(cfg, data, self.tasks)
        n = tc.steps_per_epoch * cfg.data.batch_size if tc.steps_per_epoch else None
        self.sampler = create_sampler(cfg.data.sampler, self.train_set.task_ids, num_samples=n, seed=cfg.seed)
        self.model = build_model(cfg, list(self.specs.values()))
        self.weighting = create_weighting(tc.weighting.name, **tc.weighting.kwargs)
        self.weighting.setup(list(self.specs.values()), _train_labels(data, self.specs))
        self.weighting_meta = WEIGHTINGS.meta(tc.weighting.name)
        if getattr(self.weighting, "report_", None) is not None and self.fabric.is_global_zero:
            # what a data-driven weighting decided (spearman: r, p, kept per auxiliary task), for the report
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "weighting.json").write_text(json.dumps(
                {"name": tc.weighting.name, "kwargs": tc.weighting.kwargs,
                 "main": getattr(self.weighting, "main_", None), "report": self.weighting.report_},
                indent=2, default=float))
        self.frozen = set()
        for trunk in self._trunks():
            self.frozen |= {id(p) for p in optim.freeze_stages(trunk, tc.freeze_stages)}
        self.groups = optim.param_groups(self.model, tc.optimizer, self.weighting)
        for g in self.groups:
            g["params"] = [p for p in g["params"] if id(p) not in self.frozen]
        self.optimizer = optim.build_optimizer([g for g in self.groups if g["params"]], tc.optimizer)

        main_metric = next((s.metric for s in self.specs.values() if s.role == "main"), "auc")
        self.mode = "max" if higher_is_better(main_metric) else "min"
        self.scheduler = optim.build_scheduler(self.optimizer, tc.scheduler, tc.epochs, self.mode)
        self.model, self.optimizer = self.fabric.setup(self.model, self.optimizer)
        self.weighting.to(self.fabric.device)
        world = self.fabric.world_size
        sampler = RankSlice(self.sampler, self.fabric.global_rank, world) if world > 1 else self.sampler
        self.train_loader = _loader(self.train_set, cfg, sampler)
        self.val_loader = _loader(self.val_set, cfg)
        self.epoch, self.step = 0, 0
        self.best = {"epoch": -1, "monitor": math.nan, "metrics": {}}
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.ckpt_dir = self.run_dir / "checkpoints"

    @property
    def net(self):
        return self.model.module if hasattr(self.model, "module") else self.model

    def _trunks(self):
        net = self.model.module if hasattr(self.model, "module") else self.model
        return list(net.trunks.values()) if getattr(net, "sharing", "hard") == "soft" else [net.trunk]

    # -- state --------------------------------------------------------------------------------
    def rng_states(self) -> list[dict]:
        """Every rank's random generator states, in rank order (call on every rank: it gathers)."""
        mine = ckpt.rng_state()
        if self.fabric.world_size == 1:
            return [mine]
        every = [None] * self.fabric.world_size
        torch.distributed.all_gather_object(every, mine)
        return every

    def state(self, rng: list[dict] | None = None) -> dict:
        rng = rng or [ckpt.rng_state()]
        return {
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "sampler": self.sampler.state_dict(), "weighting": self.weighting.state_dict(),
            "rng": rng[0], "rng_ranks": rng, "epoch": self.epoch, "step": self.step, "best": self.best,
            "bad_epochs": self.bad_epochs, "history": self.history, "tasks": _spec_dicts(self.specs),
            # fp16's loss scale (empty otherwise): a resumed run must skip the same overflowing steps
            "precision": self.fabric.strategy.precision.state_dict(),
        }

    def load_state(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.weighting.load_state_dict(state["weighting"])
        if state.get("precision"):
            self.fabric.strategy.precision.load_state_dict(state["precision"])
        ranks = state.get("rng_ranks") or [state["rng"]]
        rank = self.fabric.global_rank
        # the same world size: each rank continues its own draws; another: every rank takes rank 0's
        ckpt.set_rng_state(ranks[rank] if len(ranks) == self.fabric.world_size else ranks[0])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best, self.bad_epochs, self.history = state["best"], state["bad_epochs"], state["history"]

    # -- one epoch ----------------------------------------------------------------------------
    def _warming(self) -> bool:
        w = self.cfg.train.warmup
        return self.step < w.steps or self.epoch < w.epochs

    def train_epoch(self) -> dict[str, float]:
        self.sampler.set_epoch(self.epoch)
        totals: dict[str, list[float]] = {t: [0.0, 0] for t in self.tasks}
        right: dict[str, list[int]] = {t: [0, 0] for t in self.tasks}
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}", leave=False,
                   disable=not self.progress, mininterval=0.5)
        for batch in bar:
            losses, counts, correct = self.train_step(batch)
            for t, v in losses.items():
                totals[t][0] += v * counts[t]
                totals[t][1] += counts[t]
            for t, (k, n) in (correct or {}).items():
                right[t][0] += k
                right[t][1] += n
            bar.set_postfix({t: f"{s / max(n, 1):.3f}" for t, (s, n) in totals.items() if n}, refresh=False)
        if self.fabric.world_size > 1:
            # every rank saw its own slice: the epoch's numbers (history, dwa's loss ratios) are the sums
            # over ranks, the same on each
            both = self.fabric.all_reduce(torch.tensor([[*totals[t], *right[t]] for t in self.tasks],
                                                       dtype=torch.float64, device=self.fabric.device),
                                          reduce_op="sum").cpu()
            totals = {t: [float(r[0]), int(r[1])] for t, r in zip(self.tasks, both)}
            right = {t: [int(r[2]), int(r[3])] for t, r in zip(self.tasks, both)}
        # training accuracy of the running model (as the studies' tables report it), not a re-evaluation
        self.train_accuracy = {t: k / n for t, (k, n) in right.items() if n}
        return {t: (s / n if n else math.nan) for t, (s, n) in totals.items()}

    def _set_train_mode(self, warming: bool) -> None:
        self.model.train()
        for trunk in self._trunks():
            optim.apply_frozen_bn(trunk, self.cfg.train.freeze_stages)
            if warming:
                optim.set_bn_eval(trunk)

    def train_step(self, batch):
        tc = self.cfg.train
        warming = self._warming()
        self._set_train_mode(warming)
        device = self.fabric.device
        x = batch["image"].to(device, non_blocking=True)
        mask = {t: m.to(device) for t, m in batch["label_mask"].items()}
        labels = _to(batch["labels"], device)
        trunk_params = [p for t in self._trunks() for p in t.parameters() if p.requires_grad and id(p) not in self.frozen]
        if warming:
            for p in trunk_params:
                p.requires_grad_(False)
        try:
            outputs, penalty = self.model(x, label_mask=mask, with_penalty=True)
            per_sample = compute_losses(self.specs, outputs, {"labels": labels, "label_mask": mask, "image": x})
            means = {t: v.mean() for t, v in per_sample.items() if v.numel()}
            counts = {t: int(v.numel()) for t, v in per_sample.items()}
            self._check_finite(means)
            self.optimizer.zero_grad(set_to_none=True)
            if self.weighting_meta.needs_per_task_grads and not warming:
                self.weighting.backward(means, trunk_params)
                total = torch.stack(list(means.values())).sum()
            else:
                total, _ = self.weighting(means, counts=counts)
                total = total + penalty
                self._check_finite({"total": total})
                self.fabric.backward(total)
                self._sync_weighting_grads()
            if tc.grad_rescale:
                self._rescale_head_grads(counts, len(x))
            if tc.grad_clip:
                self.fabric.clip_gradients(self.model, self.optimizer, max_norm=tc.grad_clip)
            self._warmup_lr(warming)
            self.optimizer.step()
        except RuntimeError as exc:
            if "deterministic" not in str(exc):
                raise
            raise TrainingError(f"step {self.step}: {str(exc).splitlines()[0]} With train.deterministic: false the "
                                "run uses the fastest kernels (the same seed then gives close, not equal, "
                                "numbers on a GPU).") from exc
        finally:
            if warming:
                for p in trunk_params:
                    p.requires_grad_(True)
        self.step += 1
        return {t: float(v.detach()) for t, v in means.items()}, counts, _correct(self.specs, outputs, labels)

    def _rescale_head_grads(self, counts: dict[str, int], batch: int) -> None:
        """Each head's gradient times B/|B_i| (``train.grad_rescale``). Under DDP the gradients are
        already averaged over the ranks, so the factor is of the counts summed over the ranks: the
        same on every rank (a per-rank factor would move the ranks' weights apart)."""
        heads = list(self.net.heads)
        rows = [max((counts.get(t, 0) for t in self.net.heads[h].task_names), default=0) for h in heads]
        if self.fabric.world_size > 1:
            both = self.fabric.all_reduce(torch.tensor([batch, *rows], dtype=torch.float64, device=self.fabric.device),
                                          reduce_op="sum").cpu().tolist()
            batch, rows = both[0], both[1:]
        optim.rescale_head_grads(self.net.heads, dict(zip(heads, rows)), batch)

    def _sync_weighting_grads(self) -> None:
        """A weighting's own parameters (``uncertainty``'s log-variances) sit outside the DDP-wrapped
        model: their gradients are averaged here, as DDP does for the model's."""
        if self.fabric.world_size == 1:
            return
        for p in self.weighting.parameters():
            if p.grad is not None:
                p.grad.copy_(self.fabric.all_reduce(p.grad, reduce_op="mean"))

    def _check_ranks_agree(self) -> None:
        """Under DDP every rank must hold the same weights; a drift would go unseen (rank 0 alone
        saves), so each epoch compares a checksum of model and weighting parameters across ranks."""
        if self.fabric.world_size == 1:
            return
        sums = torch.stack([sum((p.detach().double().sum() for p in params), torch.zeros((), dtype=torch.float64))
                            for params in (self.net.parameters(), self.weighting.parameters())])
        every = self.fabric.all_gather(sums.to(self.fabric.device)).cpu()
        if not torch.allclose(every, every[:1].expand_as(every), rtol=1e-9, atol=0.0):
            raise TrainingError(f"DDP ranks hold different weights after epoch {self.epoch} (parameter sums per "
                                f"rank, model and weighting: {every.tolist()}); this is a bug, please report it")

    def _warmup_lr(self, warming: bool) -> None:
        lr = self.cfg.train.warmup.lr
        for g in self.optimizer.param_groups:
            if g.get("name") == "heads" and lr is not None:
                if warming:
                    g.setdefault("main_lr", g["lr"])
                    g["lr"] = lr
                elif "main_lr" in g:
                    g["lr"] = g.pop("main_lr")

    def _check_finite(self, values: dict[str, torch.Tensor]) -> None:
        for task, v in values.items():
            if not torch.isfinite(v).all():
                last = self.ckpt_dir / "last.ckpt"
                raise TrainingError(
                    f"loss of task {task!r} is {float(v.detach())} at step {self.step} (epoch {self.epoch + 1}); "
                    f"last good checkpoint: {last if last.exists() else 'none written yet'}. Lower the learning "
                    "rate or check the labels of that task")

    # -- validation and bookkeeping ---------------------------------------------------------------
    def validate(self) -> tuple[dict, dict]:
        preds = predict_split(self.model, self.val_loader, self.specs, self.fabric.device)
        metrics = {t: task_metrics(self.specs[t], p["y"], p["p"]) for t, p in preds.items()}
        return metrics, preds

    def fit(self) -> FitResult:
        tc = self.cfg.train
        if tc.bn_adapt_batches and self.epoch == 0 and self.step == 0:
            self._adapt_bn()
        # a checkpoint saved when early stopping fired (resumed after a crash in scoring) trains no more
        stopped = self._patience_spent()
        while self.epoch < tc.epochs and not stopped:
            start = time.perf_counter()
            train_losses = self.train_epoch()
            self._check_ranks_agree()
            metrics, _ = self.validate()
            monitor = monitor_value(metrics, self.specs, tc.early_stopping.monitor)
            # a task whose metric is undefined this epoch (one class in its validation rows) leaves the
            # monitor's mean: said in the log and in history.csv, never silently
            undefined = [t for t in monitored_tasks(self.specs, tc.early_stopping.monitor)
                         if t in metrics and math.isnan(metrics[t][self.specs[t].metric])]
            if undefined:
                log.warning("epoch %d: validation %s undefined for %s; the monitor averages the other tasks",
                            self.epoch + 1, "/".join(sorted({self.specs[t].metric for t in undefined})), undefined)
            self.weighting.epoch_end(self.epoch, train_losses)
            self._schedule(monitor)
            improved = self._improved(monitor)
            row = {"epoch": self.epoch + 1, "seconds": round(time.perf_counter() - start, 3),
                   "lr": self.optimizer.param_groups[0]["lr"], "monitor": monitor}
            if undefined:
                row["monitor_left_out"] = ";".join(undefined)
            row.update({f"train_loss/{t}": v for t, v in train_losses.items()})
            row.update({f"train_accuracy/{t}": v for t, v in getattr(self, "train_accuracy", {}).items()})
            row.update({f"val_{m}/{t}": v for t, ms in metrics.items() for m, v in ms.items()})
            self.history.append(row)
            self.epoch += 1
            rank0 = self.fabric.is_global_zero
            if improved:
                self.best = {"epoch": self.epoch, "monitor": monitor, "metrics": metrics}
                self.bad_epochs = 0
                # a copy of the weights at this epoch, never a reference to the live model
                if rank0:
                    # trunk_name/kwargs: the options the trunk was built with (an ImageNet start of
                    # efficientnet_lite0 adds TF padding and bn_eps), so that load_run and
                    # `pretrained: best.ckpt` rebuild this network, not one with other padding
                    trunk = self._trunks()[0]
                    ckpt.save_atomic({"model": copy.deepcopy(self.net.state_dict()), "epoch": self.epoch,
                                      "metrics": metrics, "tasks": _spec_dicts(self.specs),
                                      "trunk_name": getattr(trunk, "trunk_name", None),
                                      "trunk_kwargs": dict(getattr(trunk, "trunk_kwargs", {}))},
                                     self.ckpt_dir / "best.ckpt")
            else:
                self.bad_epochs += 1
            rng = self.rng_states()
            if rank0:
                ckpt.save_atomic(self.state(rng), self.ckpt_dir / "last.ckpt")
                self._write_history()
            self._log_mlflow(row)
            log.info("epoch %d: %s", self.epoch, {k: v for k, v in row.items() if k.startswith("val_")})
            if self.fabric.is_global_zero and epoch_log.isEnabledFor(logging.INFO):
                epoch_log.info("%s", epoch_line(self.run_dir, self.epoch, tc.epochs, row, improved))
            if self._patience_spent():
                log.info("early stopping after %d epochs without improvement", self.bad_epochs)
                stopped = True
                break
        self.fabric.barrier()
        # the one decision training takes: which epoch's weights are kept, from these validation splits
        selection = {"reads": [{"task": t, "split": "val"} for t in monitored_tasks(self.specs, tc.early_stopping.monitor)],
                     "chose": self.best["epoch"], "grid": list(range(1, self.epoch + 1)), "mode": self.mode}
        if self.fabric.is_global_zero:
            (self.run_dir / "metrics.json").write_text(json.dumps(
                {"best_epoch": self.best["epoch"], "monitor": self.best["monitor"], "val": self.best["metrics"],
                 "selection": selection, "processes": self.fabric.world_size}, indent=2, default=float))
        return FitResult(self.run_dir, self.best["epoch"], self.best["monitor"], self.best["metrics"],
                         self.history, stopped, self.mode, selection)

    def _patience_spent(self) -> bool:
        patience = self.cfg.train.early_stopping.patience
        return bool(patience) and self.bad_epochs >= patience

    def _improved(self, monitor: float) -> bool:
        if math.isnan(monitor):
            return self.best["epoch"] < 0
        best = self.best["monitor"]
        if best is None or math.isnan(best):
            return True
        delta = self.cfg.train.early_stopping.min_delta
        return monitor > best + delta if self.mode == "max" else monitor < best - delta

    def _schedule(self, monitor: float) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if not math.isnan(monitor):
                self.scheduler.step(monitor)
        else:
            self.scheduler.step()

    def _adapt_bn(self) -> None:
        """Batch-norm statistics re-estimated on the first training batches, which the first epoch
        then trains on as usual (the sampler's position is put back), pooled over the DDP ranks."""
        state = self.sampler.state_dict()
        it = iter(self.train_loader)
        batches = [next(it) for _ in range(min(self.cfg.train.bn_adapt_batches, len(self.train_loader)))]
        del it     # a loader's workers fetch ahead: stop them before the sampler is rewound
        self.sampler.load_state_dict(state)
        device = self.fabric.device
        world = self.fabric.world_size
        average = (lambda t: self.fabric.all_reduce(t, reduce_op="mean")) if world > 1 else None
        n = optim.adapt_batchnorm(self.net, batches, lambda b: self.net(b["image"].to(device)), average=average)
        log.info("batch-norm statistics re-estimated on %d batches (%d layers)", len(batches), n)

    def _write_history(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        tmp = self.run_dir / ".history.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        tmp.replace(self.run_dir / "history.csv")

    def _log_mlflow(self, row: dict) -> None:
        if not self.cfg.train.mlflow or not self.fabric.is_global_zero:
            return

        log_epoch(self.cfg, self.run_dir, row)


def set_determinism(deterministic: bool) -> None:
    """Deterministic kernels or the fastest ones (Fabric, unlike Lightning's Trainer, has no switch).

    Strict: an operation without a deterministic kernel raises instead of warning. medmtl's own
    heads avoid the two that lack one on CUDA (bilinear resizing and adaptive pooling backward;
    ``medmtl.models.heads._ops``); :meth:`Trainer.train_step` turns any other into an error that
    names it. Process-wide torch state; ``CUBLAS_WORKSPACE_CONFIG`` is set when medmtl is imported.
    """
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic)


def _check_fabric_options(tc, weighting_meta) -> None:
    """Refuse the pairs that would train wrongly without an error.

    A gradient-based weighting computes its task gradients itself (TorchJD), outside fp16's loss
    scaler (the step would divide unscaled gradients by the scale and barely move) and outside
    DDP's gradient all-reduce (each process would step with its own gradients and drift apart).
    """
    if not weighting_meta.needs_per_task_grads:
        return
    name = tc.weighting.name
    if tc.precision == "16-mixed":
        raise MedmtlError(
            f"train.weighting {name!r} aggregates per-task gradients itself, which fp16 loss scaling "
            "cannot pass through: set train.precision to 'bf16-mixed' (no loss scaling; Ampere GPUs "
            "and newer, and CPUs) or '32-true'")
    if tc.devices > 1:
        raise MedmtlError(
            f"train.weighting {name!r} aggregates per-task gradients itself, outside DDP's gradient "
            f"synchronisation: train on one device (train.devices: 1, no --devices {tc.devices}) or "
            "choose a loss weighting such as 'mean', 'main_aux' or 'uncertainty'")


@torch.no_grad()
def _correct(specs: dict, outputs, labels) -> dict[str, tuple[int, int]]:
    """(right, labelled) argmax predictions per single-label classification task of one batch
    (the model returns each task only the rows it labels)."""
    out = {}
    for task, (output, rows) in outputs.items():
        if specs[task].kind not in SINGLE_LABEL_KINDS:
            continue
        pred = output.argmax(dim=1)
        out[task] = (int((pred == labels[task][rows]).sum()), len(rows))
    return out


def _to(obj, device):
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj.to(device)


def _spec_dicts(specs: dict) -> list[dict]:
    return [{"name": s.name, "kind": s.kind, "classes": list(s.classes), "target": s.target, "source": s.source,
             "role": s.role, "loss_weight": s.loss_weight, "metric": s.metric, "group_key": s.group_key,
             "domain": s.domain, "evaluate_at": s.evaluate_at} for s in specs.values()]


def fit(cfg, data, run_dir: str | Path, *, resume: bool = False, progress: bool = True) -> FitResult:
    """Train ``cfg``'s model on prepared ``data`` into ``run_dir``; ``resume`` continues from
    ``run_dir/checkpoints/last.ckpt`` (after a crash or a kill -9).

    With ``train.devices`` N > 1, called outside a distributed job, the training alone runs on N new
    processes (DDP) and this process waits for its result: whatever the caller does before and after
    (an experiment's other arms, scoring, the report) happens once. Inside a job launched from outside
    (``torchrun``, a cluster's scheduler: ``LOCAL_RANK`` is set), this process is one of the ranks.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.devices > 1 and not _in_distributed_job():
        return _fit_on_new_processes(cfg, data, run_dir, resume=resume, progress=progress)
    trainer = Trainer(cfg, data, run_dir, progress=progress)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise MedmtlError(f"--resume {run_dir}: no checkpoint at {last}")
        trainer.load_state(ckpt.load(last))
        log.info("resumed from %s at epoch %d", last, trainer.epoch)
    return trainer.fit()


# -- DDP on new processes --------------------------------------------------------------------
RESULT_FILE = ".fit_result.pkl"


def _in_distributed_job() -> bool:
    return "LOCAL_RANK" in os.environ or (torch.distributed.is_available() and torch.distributed.is_initialized())


def _fit_on_new_processes(cfg, data, run_dir: Path, *, resume: bool, progress: bool) -> FitResult:
    """``fit`` on ``train.devices`` spawned ranks (a fresh interpreter each, as CUDA needs); each rank
    prepares the data again from the config they came from and checks it got the same data."""
    if data.prepared_from is None:
        raise MedmtlError("train.devices > 1 needs data made by medmtl.data.pipeline.prepare: each DDP process "
                          "prepares them again from the config they were prepared from")
    with socket.socket() as sock:        # a free port for the ranks' rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (run_dir / RESULT_FILE).unlink(missing_ok=True)
    levels = {name: logging.getLogger(name).getEffectiveLevel() for name in ("", "medmtl", EPOCH_LOG)}
    log.info("%s: training on %d processes (DDP)", run_dir, cfg.train.devices)
    mp.start_processes(_rank_main, nprocs=cfg.train.devices, start_method="spawn",
                       args=(cfg.model_dump(mode="json"), data.prepared_from, data.fingerprint(), str(run_dir),
                             resume, progress, port, cfg.train.devices, levels))
    path = run_dir / RESULT_FILE
    result = pickle.loads(path.read_bytes())
    path.unlink()
    return result


def _rank_main(rank: int, cfg_raw: dict, data_raw: dict, fingerprint: str, run_dir: str, resume: bool,
               progress: bool, port: int, world: int, levels: dict) -> None:
    """One spawned DDP rank: the environment a launcher would set, the same data, then ``fit``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), NODE_RANK="0",
                      LOCAL_RANK=str(rank), RANK=str(rank))
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level if rank == 0 else max(level, logging.WARNING))
    logging.getLogger("medmtl.data").setLevel(logging.ERROR)    # the caller has said it all about the data
    data = prepare(parse_config(data_raw, "DDP rank: data config"), progress=False, write_splits=False)
    if data.fingerprint() != fingerprint:
        raise MedmtlError(f"DDP rank {rank}: the data prepared again from their config differ from the caller's "
                          "(labels or split rows changed after preparation); train on one device")
    result = fit(parse_config(cfg_raw, "DDP rank: training config"), data, run_dir, resume=resume,
                 progress=progress and rank == 0)
    if rank == 0:
        tmp = Path(run_dir) / f"{RESULT_FILE}.tmp"
        tmp.write_bytes(pickle.dumps(result))
        tmp.replace(Path(run_dir) / RESULT_FILE)
