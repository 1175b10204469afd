"""What a study's protocol costs on an accelerator: its trainings, their optimiser steps, the
forward-only passes around them, and the FLOPs of one step of each distinct model.

    plan = plan_study(cfg, cache_dir)      # every training and forward pass the protocol runs
    flops = step_flops(plan.models[key])   # FLOPs of one training step and of one image's forward
    secs = time_model(plan.models[key])    # measured seconds per training step and forward batch

:func:`plan_study` walks the config as ``medmtl run`` does (applications, CV folds, arms x seeds,
LOTO trials, transfers, whole-pool models) through the protocols' own helpers
(``application_config``, ``fold_config``, ``balance_scores``, ``arm_config``, ``left_out_groups``,
``combinations``), and sizes each training from the prepared data the way the engine does
(``build_datasets``; steps per epoch = ``train.steps_per_epoch`` or the training items over the batch
size). Only the strategies' choice of how many models they train is restated here (:data:`PLANNED`),
and tests/test_gpu_check.py runs a reduced study for real and compares every training's run dir and
step count with the plan. Counted at ``train.epochs``: early stopping can end a training sooner.
"""
from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from medmtl.config import override_config
from medmtl.config.schema import ArmConfig, ModelConfig, TrainConfig
from medmtl.data.dataset import MultiTaskDataset
from medmtl.data.pipeline import TaskSpec, prepare
from medmtl.engine import optim
from medmtl.engine.build import build_datasets, build_model, limit_items, scoring_subset
from medmtl.models.trunks import _pretrained
from medmtl.models.trunks._factory import IMAGENET, OFFLINE_IMAGENET
from medmtl.mtl.weightings import WEIGHTINGS
from medmtl.protocols.applications import application_config
from medmtl.protocols.comparison import arm_dir
from medmtl.protocols.cv import balance_scores, fold_config
from medmtl.protocols.loto import combinations, combo_id, left_out_groups, target_groups
from medmtl.protocols.strategies import ArmContext, arm_config

SCORING_BATCH = 128      # split_scores and compute_features predict in batches of 128
TTA_VIEWS = 8            # the dihedral group of each image
# trainings per strategy, as medmtl.protocols.strategies trains them (tests pin this set to STRATEGIES)
PLANNED = ("stl", "mtl", "joint", "sequential", "finetune", "scratch", "freeze_sweep", "feature_extraction")


@dataclass
class Training:
    """One call of the engine's ``fit``: ``where`` is its run dir relative to the experiment's."""

    where: str
    model: str
    epochs: int
    steps_per_epoch: int
    warmup_steps: int
    train_images: int

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class Forward:
    """Forward-only passes of one model: ``calls`` batches (views counted) over ``images`` images."""

    where: str
    model: str
    images: int
    calls: int
    batch_size: int


@dataclass
class Plan:
    trainings: list[Training] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    models: dict[str, dict] = field(default_factory=dict)    # key -> what builds it (see model_build)
    notes: list[str] = field(default_factory=list)


def plan_study(cfg, cache_dir: str | Path | None = None) -> Plan:
    """Every training and forward-only pass ``medmtl run`` makes for ``cfg`` (profile already applied).

    Data are prepared (decoded into ``cache_dir``, default the config's) because the number of
    steps per epoch is the training set's size over the batch size; split files go to a temporary
    directory, never to the config's run dir.
    """
    with tempfile.TemporaryDirectory(prefix="medmtl-plan-") as tmp:
        cfg = override_config(cfg, {"run_dir": tmp, **({"cache_dir": str(cache_dir)} if cache_dir else {})}, "plan")
        planner = _Planner(Path(tmp))
        if cfg.experiment is not None:
            planner.comparisons(cfg)
        if cfg.loto is not None:
            planner.loto(cfg)
        return planner.plan


def _steps_per_epoch(cfg, train_items: int) -> int:
    # the sampler yields steps_per_epoch x batch indices, or every training item once; no drop_last
    return cfg.train.steps_per_epoch or math.ceil(train_items / cfg.data.batch_size)


def _calls(images: int, batch: int, views: int = 1) -> int:
    return math.ceil(images / batch) * views


class _Planner:
    def __init__(self, root: Path):
        self.root, self.plan = root, Plan()
        self._data: dict[str, object] = {}
        self._networks: dict[str, dict] = {}   # best.ckpt path of a planned training -> its trunk options
        self._runs: dict[str, tuple] = {}      # run dir -> (model key, its training's config)
        self._features: set[tuple] = set()     # memoised trunk features (medmtl.evaluation.features)
        self._scope = 0                        # which prepare() the features memo belongs to

    # -- data ---------------------------------------------------------------------------------
    def data(self, cfg):
        """Prepared data where the protocol prepares it, decoded once per distinct task list and data
        settings (an application's, a fold's); each call opens a new feature memo, as a fresh
        ``prepare`` does in the protocol."""
        key = json.dumps([cfg.model_dump(mode="json")[k] for k in ("tasks", "duplicates", "leakage", "cache_dir")],
                         sort_keys=True)
        if key not in self._data:
            self._data[key] = prepare(cfg, progress=False, write_splits=False)
        self._scope += 1
        return self._data[key]

    def _rel(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    # -- comparisons (holdout and CV), as protocols.run._run_comparisons ------------------------
    def comparisons(self, cfg) -> None:
        apps = cfg.experiment.applications or {"": None}
        for name, app in apps.items():
            acfg = application_config(cfg, name, app) if app is not None else cfg
            app_dir = self.root / "applications" / name if name else self.root
            if acfg.experiment.cv is None:
                self.arms(acfg, self.data(acfg), app_dir, acfg.experiment.arms, acfg.experiment.seeds)
            else:
                self.cv(acfg, app_dir)

    def cv(self, cfg, app_dir: Path) -> None:
        exp, cv = cfg.experiment, cfg.experiment.cv
        if cv.criterion == "balance":
            spread = balance_scores(cfg, progress=False)
            chosen = min(spread, key=lambda k: spread[k][:2])
        else:
            arm = next(a for a in exp.arms if a.name == cv.reference_arm)
            for k in range(cv.candidates):
                for f in range(cv.n_splits):
                    fcfg = fold_config(cfg, k, f)
                    fold_dir = app_dir / "cv" / "candidates" / f"candidate{k}" / f"fold{f}"
                    self.arms(fcfg, self.data(fcfg), fold_dir, [arm], [exp.seeds[0]], splits=("val",))
            chosen = 0
            self.plan.notes.append("cv criterion 'reference': the representative split is chosen on trained "
                                   "models; its folds are costed as candidate 0's")
        for f in range(cv.n_splits):
            fcfg = fold_config(cfg, chosen, f)
            fold_dir = app_dir / "cv" / f"candidate{chosen}" / f"fold{f}"
            self.arms(fcfg, self.data(fcfg), fold_dir, exp.arms, exp.seeds)

    def arms(self, cfg, data, run_dir: Path, arms, seeds, splits=("val", "test")) -> None:
        """As comparison.run_arms: every arm per seed, then its selected models scored on ``splits``."""
        exp = cfg.experiment
        evaluate = [t for t in (exp.evaluate or [exp.main_task]) if t in data.tasks]
        for seed in seeds:
            finished: dict[str, Path] = {}
            for arm in arms:
                directory = arm_dir(run_dir, arm.name, seed)
                ctx = ArmContext(cfg, arm, data, seed, directory, finished, splits=tuple(splits))
                runs = self.strategy(ctx, data)
                for run in runs.values():
                    self.score(run, data, evaluate, splits, exp.tta, f"{self._rel(run)} scoring")
                finished[arm.name] = runs.get("", directory)

    def strategy(self, ctx, data) -> dict[str, Path]:
        """The models one arm trains (medmtl.protocols.strategies), as {sub-run: run dir} to score."""
        arm, main = ctx.arm, ctx.cfg.experiment.main_task
        start = self._arm_start(ctx)
        name = arm.strategy
        if name not in PLANNED:
            raise ValueError(f"strategy {name!r} has no cost plan in benchmarks/study_cost.py; add it to "
                             f"PLANNED and to _Planner.strategy (planned: {list(PLANNED)})")
        if name in ("stl", "mtl", "joint"):
            return {"": self.train(ctx, arm.tasks or [main], ctx.run_dir, pretrained=start)}
        if name == "sequential":
            base = self.train(ctx, arm.source, ctx.run_dir / "source", pretrained=start)
            return {"": self.train(ctx, [main], ctx.run_dir / "target", pretrained=_best(base), head=arm.head)}
        if name in ("finetune", "scratch"):
            pretrained = start if name == "finetune" else None
            runs = [self.train(ctx, [main], ctx.run_dir / f"lr={lr:g}", pretrained=pretrained,
                               extra={"train.optimizer.lr": lr}) for lr in arm.lrs]
            # the learning rate is chosen on validation after training; every candidate is one network
            return {"": runs[0]}
        if name == "freeze_sweep":
            return {f"freeze={k}": self.train(ctx, [main], ctx.run_dir / f"freeze={k}", pretrained=start,
                                              extra={"train.freeze_stages": k}) for k in arm.freeze}
        self.features(ctx, data, main, start, ctx.splits)
        return {}

    def _arm_start(self, ctx):
        """strategies._arm_pretrained: another arm's selected model, or the arm's ``pretrained``."""
        if ctx.arm.source_arm:
            return _best(ctx.arm_dirs[ctx.arm.source_arm])
        return ctx.arm.pretrained

    # -- one training, one scoring, one feature extraction --------------------------------------
    def train(self, ctx, tasks, run_dir: Path, **kw) -> Path:
        """As strategies.train_arm (its config) and the engine's Trainer (its datasets and steps)."""
        cfg = arm_config(ctx, list(tasks), run_dir, **kw)
        names = [t.name for t in cfg.tasks]
        train_set, val_set = build_datasets(cfg, ctx.data, names)
        tc = cfg.train
        spe = _steps_per_epoch(cfg, len(train_set))
        steps = tc.epochs * spe
        warm = min(steps, max(tc.warmup.steps, tc.warmup.epochs * spe))
        key = self.model(cfg, ctx.data, names)
        where = self._rel(run_dir)
        self.plan.trainings.append(Training(where, key, tc.epochs, spe, warm, len(train_set)))
        # validation after every epoch, at the training batch size
        batch = cfg.data.batch_size
        self.plan.forwards.append(Forward(f"{where} validation", key, tc.epochs * len(val_set),
                                          tc.epochs * _calls(len(val_set), batch), batch))
        if tc.bn_adapt_batches:
            self.plan.forwards.append(Forward(f"{where} bn_adapt", key, tc.bn_adapt_batches * batch,
                                              tc.bn_adapt_batches, batch))
        self._networks[_best(run_dir)] = self.plan.models[key]["trunk_options"]
        self._runs[str(run_dir)] = (key, cfg)
        return run_dir

    def score(self, run: Path, data, tasks, splits, tta: bool, where: str) -> None:
        """evaluation.scoring.score_run on each split (TTA: 8 views; validation again without)."""
        key, cfg = self._runs[str(run)]
        tasks = [t for t in tasks if t in {s.name for s in cfg.tasks}]   # a single-task arm: the task it learned
        if not tasks:
            return
        passes = [(s, TTA_VIEWS if tta else 1) for s in splits] + ([("val", 1)] if tta and "val" in splits else [])
        for split, views in passes:
            ds = MultiTaskDataset(data, split, tasks, preset=cfg.data.augmentation, train=False,
                                  size=cfg.data.size, in_chans=cfg.model.trunk.in_chans)
            n = len(scoring_subset(ds, cfg, split))
            self.plan.forwards.append(Forward(f"{where} {split} x{views}", key, n * views,
                                              _calls(n, SCORING_BATCH, views), SCORING_BATCH))

    def features(self, ctx, data, task: str, pretrained, splits, tta: bool | None = None) -> None:
        """strategies.svm_transfer's forward passes: pooled trunk features of the training split and
        ``splits``, each computed once per trunk weights (evaluation.features memoises them; its
        2 GiB bound is taken as not reached). ``tta``: default the experiment's."""
        cfg = arm_config(ctx, [task], ctx.run_dir, pretrained=pretrained)
        key = self.model(cfg, data, [task])
        weights = self._weights_of(cfg.model.trunk.pretrained, ctx.seed)
        if tta is None:
            tta = ctx.cfg.experiment is not None and ctx.cfg.experiment.tta
        for split in ("train", *splits):
            views = TTA_VIEWS if tta and split != "train" else 1
            memo = (self._scope, weights, task, split, views)
            if memo in self._features:
                continue
            self._features.add(memo)
            ds = MultiTaskDataset(data, split, [task], preset=cfg.data.augmentation, train=False,
                                  size=cfg.data.size, in_chans=cfg.model.trunk.in_chans)
            ds = limit_items(ds, cfg.data.limit_train, cfg.seed) if split == "train" else scoring_subset(ds, cfg, split)
            n = len(ds)
            self.plan.forwards.append(Forward(f"{self._rel(ctx.run_dir)} features {task} {split} x{views}",
                                              key, n * views, _calls(n, SCORING_BATCH, views), SCORING_BATCH))

    @staticmethod
    def _weights_of(pretrained, seed: int) -> str:
        # an ImageNet or saved trunk is the same whatever the seed; a random one is the seed's
        return f"random/seed{seed}" if pretrained is None else str(pretrained)

    # -- models ---------------------------------------------------------------------------------
    def model(self, cfg, data, names) -> str:
        """The key of the network ``cfg`` trains for ``names`` (registered in ``plan.models``)."""
        options = self._trunk_options(cfg.model.trunk)
        build = model_build(cfg, [data.tasks[n] for n in names], options)
        key = build_key(build)
        if key not in self.plan.models:
            self.plan.models[key] = {**build, "trunk_options": options}
        return key

    def _trunk_options(self, trunk) -> dict:
        """The options ``create_trunk`` builds the trunk with: a saved trunk's own (an earlier
        training's, or a file's), or ImageNet EfficientNet-Lite0's TF padding and batch-norm eps."""
        given = dict(trunk.kwargs)
        if trunk.pretrained in self._networks:
            return {**self._networks[trunk.pretrained], **given}
        if trunk.pretrained == IMAGENET and trunk.name == OFFLINE_IMAGENET:
            return {**_pretrained.EFFICIENTNET_LITE0_TF_KWARGS, **given}
        if trunk.pretrained not in (None, IMAGENET):
            saved = dict(_pretrained.read_trunk_checkpoint(trunk.pretrained).trunk_kwargs or {})
            return {**{k: v for k, v in saved.items() if k not in ("in_chans", "small_input")}, **given}
        return given

    # -- LOTO, as protocols.loto.run_loto ----------------------------------------------------------
    def loto(self, cfg) -> None:
        lc, data = cfg.loto, self.data(cfg)
        out = self.root / "loto"
        groups = target_groups(left_out_groups(lc.pool, lc.related), lc.targets)
        combos = {combo_id(c): c for c in combinations(lc.grid)}
        arm = ArmConfig(name="loto", strategy="joint", svm_c=lc.svm_c, lrs=lc.lrs)
        trial_models: dict[tuple, Path] = {}
        for group in groups:
            for cid, combo in combos.items():
                for seed in lc.seeds:
                    trial = out / "trials" / "+".join(group) / cid / f"seed{seed}"
                    ctx = ArmContext(cfg, arm, data, seed, trial / "model", task="+".join(group))
                    model = self.train(ctx, [t for t in lc.pool if t not in group], trial / "model", extra=combo)
                    trial_models["+".join(group), cid, seed] = model
                    for task in group:
                        self.features(ctx, data, task, _best(model), ("val",))
        self._check_one_network(combos, trial_models, "LOTO transfers")
        # the combination a target gets is chosen on the trials' validation AUC, after training: its
        # transfers are costed from the first combination's model (see _check_one_network)
        first = next(iter(combos))
        for group in groups:
            for target in group:
                for seed in lc.seeds:
                    tdir = out / "transfer" / target / f"seed{seed}"
                    ckpt = _best(trial_models["+".join(group), first, seed])
                    ctx = ArmContext(cfg, arm, data, seed, tdir)
                    if "feature_extraction" in lc.transfer:
                        # the transfer's experiment is the target alone, without TTA (loto._target_exp)
                        self.features(ctx, data, target, ckpt, ("val", "test"), tta=False)
                    if "finetune" in lc.transfer:
                        runs = [self.train(ctx, [target], tdir / f"lr={lr:g}", pretrained=ckpt,
                                           extra={"train.optimizer.lr": lr}) for lr in lc.lrs]
                        self.score(runs[0], data, [target], ("val", "test"), False, f"{self._rel(tdir)} scoring")
        if lc.joint or lc.artifact:
            self._pool(cfg, data, out, combos if lc.joint else {first: combos[first]}, arm, groups)

    def _pool(self, cfg, data, out: Path, combos: dict, arm, groups) -> None:
        """loto._pool_models and _joint_rows: whole-pool models, validation of every target, and
        test of the chosen combination's models (costed as the first combination's)."""
        lc = cfg.loto
        targets = [t for g in groups for t in g] if lc.joint else []
        models = {}
        for cid, combo in combos.items():
            for seed in lc.seeds:
                model_dir = out / "trials" / "_pool" / cid / f"seed{seed}" / "model"
                ctx = ArmContext(cfg, arm, data, seed, model_dir, task="pool")
                models[cid, seed] = self.train(ctx, list(lc.pool), model_dir, extra=combo)
                for t in targets:
                    self.score(models[cid, seed], data, [t], ("val",), False, f"{self._rel(model_dir)} scoring")
        first = next(iter(combos))
        for t in targets:
            for seed in lc.seeds:
                self.score(models[first, seed], data, [t], ("test",), False, f"loto joint {t} seed{seed}")

    def _check_one_network(self, combos: dict, models: dict, what: str) -> None:
        keys = {cid: {self._runs[str(m)][0] for (g, c, s), m in models.items() if c == cid} for cid in combos}
        if len({frozenset(v) for v in keys.values()}) > 1:
            self.plan.notes.append(f"{what}: the grid's combinations build different networks; the transfers "
                                   "are costed from the first combination's")


def _best(run_dir) -> str:
    return str(Path(run_dir) / "checkpoints" / "best.ckpt")


# -- what builds a model, and its FLOPs -------------------------------------------------------------
TRAIN_KEYS = ("freeze_stages", "channels_last", "precision", "deterministic", "grad_clip", "accelerator")


def model_build(cfg, specs, trunk_options: dict) -> dict:
    """Everything that sets a training step's work, JSON-able: the model section (random init with
    the trunk options the real start would give), the batch shape, the optimiser kind, precision,
    frozen stages and weighting, and the task specs the heads are built for."""
    model = cfg.model.model_dump(mode="json")
    model["trunk"].update(pretrained=None, kwargs=trunk_options)
    opt = cfg.train.optimizer
    size = cfg.data.size or max(cfg.task(s.name).image.size for s in specs)
    return {"model": model, "batch_size": cfg.data.batch_size, "size": size, "in_chans": cfg.model.trunk.in_chans,
            "train": {**{k: getattr(cfg.train, k) for k in TRAIN_KEYS},
                      "optimizer": {"name": opt.name, "momentum": opt.momentum, "weight_decay": opt.weight_decay},
                      "weighting": cfg.train.weighting.model_dump(mode="json")},
            "tasks": [{"name": s.name, "kind": s.kind, "classes": list(s.classes), "target": s.target,
                       "source": s.source, "role": s.role, "metric": s.metric} for s in specs]}


BUILD_FIELDS = ("model", "batch_size", "size", "in_chans", "train", "tasks")


def build_key(build: dict) -> str:
    text = json.dumps({k: build[k] for k in BUILD_FIELDS}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def model_label(build: dict) -> str:
    trunk = build["model"]["trunk"]
    heads = sorted({h["name"] for h in build["model"]["heads"].values()})
    freeze = build["train"]["freeze_stages"]
    return (f"{trunk['name']}{' ' + json.dumps(trunk['kwargs'], sort_keys=True) if trunk['kwargs'] else ''} "
            f"{build['size']} px x{build['batch_size']} [{','.join(t['name'] for t in build['tasks'])}]"
            f"{' heads ' + ','.join(heads) if heads else ''}{f' freeze={freeze}' if freeze else ''}")


def _rebuild(build: dict, trunk: str | None = None):
    """The model of ``build`` (random init); ``trunk`` replaces its trunk (the dry run's tiny one)."""
    model = ModelConfig.model_validate(build["model"])
    if trunk is not None:
        model.trunk = model.trunk.model_copy(update={"name": trunk, "kwargs": {}})
    train = TrainConfig.model_validate({**{k: build["train"][k] for k in TRAIN_KEYS},
                                        "optimizer": build["train"]["optimizer"],
                                        "weighting": build["train"]["weighting"]})
    cfg = SimpleNamespace(model=model, train=train)
    specs = [TaskSpec(**{**t, "classes": tuple(t["classes"])}) for t in build["tasks"]]
    net = build_model(cfg, specs)
    for t in _trunks(net):
        optim.freeze_stages(t, min(train.freeze_stages, len(t.stages())) if trunk else train.freeze_stages)
    return cfg, net, specs


def _trunks(net) -> list:
    return list(net.trunks.values()) if getattr(net, "sharing", "hard") == "soft" else [net.trunk]


def _surrogate_loss(outputs) -> torch.Tensor:
    """A scalar over every differentiable output: the backward pass's work does not depend on the loss."""
    leaves = [x for x in torch.utils._pytree.tree_leaves(outputs)
              if isinstance(x, torch.Tensor) and x.requires_grad]
    return sum(x.float().mean() for x in leaves)


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: each requested gradient (input, weight) costs what the
    forward convolution costs, since every multiply-add of the forward has one partner in each.

    torch's own formula (2.14) counts the weight gradient as a convolution over the batch with the
    input's full channel count, ignoring ``groups``: a depthwise convolution's is then overcounted
    by its channel count (EfficientNet-Lite0's backward came out 43x its forward). pytorch/pytorch
    PR #183405 divides it by ``groups``; this formula does not depend on which torch is installed.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops():
    """A FlopCounterMode with the corrected convolution backward (see :func:`conv_backward_flop`)."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop})


def step_flops(build: dict) -> dict:
    """FLOPs of one training step of ``build`` on a batch of its shape (forward + backward, frozen
    stages as the Trainer freezes them), of a warm-up step (trunk frozen: backward reaches the heads
    only) and of one image's forward. Counted on the meta device (shapes only, nothing computed),
    or on the CPU where an operation has no meta kernel. Every head gets every row (the engine
    routes a head only the rows labelled for its tasks), an upper bound for multi-source batches;
    a weighting with per-task gradients runs the backward once per task."""
    device = "meta"
    try:
        counts = {kind: _count(build, device, kind) for kind in ("step", "warmup")}
    except (NotImplementedError, RuntimeError):
        device = "cpu"
        counts = {kind: _count(build, device, kind) for kind in ("step", "warmup")}
    fwd, bwd = counts["step"]
    n_back = len(build["tasks"]) if WEIGHTINGS.meta(build["train"]["weighting"]["name"]).needs_per_task_grads else 1
    return {"step": fwd + n_back * bwd, "warmup_step": sum(counts["warmup"]),
            "forward_per_image": fwd / build["batch_size"], "counted_on": device}


def _count(build: dict, device: str, kind: str) -> tuple[int, int]:
    with torch.device(device):
        torch.manual_seed(0)
        _, net, _ = _rebuild(build)
        x = torch.randn(build["batch_size"], build["in_chans"], build["size"], build["size"])
    if kind == "warmup":
        for t in _trunks(net):
            t.requires_grad_(False)
    net.train()
    with count_flops() as fc:
        out = net(x)
        forward = fc.get_total_flops()
        _surrogate_loss(out).backward()
        total = fc.get_total_flops()
    return forward, total - forward


# -- measured step times ---------------------------------------------------------------------------
def time_model(build: dict, steps: int = 20, warmup: int = 5, trunk: str | None = None,
               eval_batches: tuple[int, ...] = (SCORING_BATCH,)) -> dict:
    """Seconds per training step of ``build`` (optimiser included, Fabric at its precision on the
    default accelerator, deterministic kernels as configured) on a random batch already on the
    device, and seconds per forward batch at each of ``eval_batches``. Data loading is not timed."""
    from lightning.fabric import Fabric  # lazy: seconds to import

    from medmtl.engine.loop import set_determinism

    cfg, net, specs = _rebuild(build, trunk)
    fabric = Fabric(accelerator="auto", devices=1, precision=cfg.train.precision)
    set_determinism(cfg.train.deterministic)
    groups = optim.param_groups(net, cfg.train.optimizer)
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    opt = optim.build_optimizer([g for g in groups if g["params"]], cfg.train.optimizer)
    net, opt = fabric.setup(net, opt)
    b, c, s = build["batch_size"], build["in_chans"], build["size"]
    x = torch.randn(b, c, s, s, device=fabric.device)
    mask = {t.name: torch.ones(b, dtype=torch.bool, device=fabric.device) for t in specs}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = _surrogate_loss(net(x, label_mask=mask))
        fabric.backward(loss)
        opt.step()
        return float(loss.detach())     # the engine reads every step's losses back, a sync each

    net.train()
    step_s = _timed(step, steps, warmup, fabric.device)
    net.eval()
    forward_s = {}
    with torch.no_grad():
        for batch in sorted({*eval_batches, b}):
            xb = torch.randn(batch, c, s, s, device=fabric.device)
            forward_s[str(batch)] = _timed(lambda: net(xb), steps, warmup, fabric.device)
    return {"step_s": step_s, "forward_s": forward_s, "device": str(fabric.device), "steps": steps}


def _timed(fn, n: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / n


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
