"""Comparison strategies (a registry): how an arm turns data into a model for the main task.

Each strategy receives an :class:`ArmContext` and returns the run dir whose ``best.ckpt`` scores
the main task (``feature_extraction`` returns scores directly). Model selection uses validation
data only; the experiment runner scores the test split once, afterwards.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from medmtl._registry import Registry
from medmtl.config import override_config, save_config
from medmtl.data.dataset import MultiTaskDataset
from medmtl.engine.build import build_model, limit_items, scoring_subset
from medmtl.engine.loop import fit
from medmtl.engine.predict import default_device
from medmtl.errors import ConfigError
from medmtl.evaluation import audit
from medmtl.evaluation.features import trunk_features, weights_digest
from medmtl.evaluation.results import NO_TTA_SPLIT


@dataclass(frozen=True)
class StrategyInfo:
    """``trains``: the strategy trains a network (``feature_extraction`` fits an SVM on a frozen one)."""

    trains: bool


STRATEGIES: Registry = Registry("strategy", StrategyInfo)
log = logging.getLogger("medmtl.protocols")


@dataclass
class ArmContext:
    cfg: object            # the experiment config
    arm: object            # its ArmConfig
    data: object           # PreparedData of every task
    seed: int
    run_dir: Path          # arms/<arm>/seed<k>
    arm_dirs: dict = field(default_factory=dict)   # finished arms: name -> run dir of seed
    splits: tuple = ("val", "test")                # what the arm's models are scored on afterwards
    decisions: list = field(default_factory=list)  # the selection audit's records of this arm
    task: str | None = None                        # what the arm's choices are for (default: the main task)

    def decide(self, what: str, **kw) -> None:
        """Record one selection decision of the arm (see :mod:`medmtl.evaluation.audit`)."""
        task = self.task or _main(self)
        self.decisions.append(audit.decision(what, arm=self.arm.name, seed=self.seed, task=task, **kw))


@dataclass
class ArmOutcome:
    """``runs``: sub-arm name -> run dir with a best.ckpt (``""`` = the arm itself)."""

    runs: dict[str, Path]
    scores: dict | None = None     # feature extraction: {split: {task: {"y","p","item"}}, "dataset": ...}
    notes: list[str] = field(default_factory=list)


def arm_config(ctx: ArmContext, tasks: list[str], run_dir: Path, *, pretrained="inherit", head=None,
               extra: dict | None = None):
    """The experiment config narrowed to ``tasks`` with the arm's overrides, seed and run dir."""
    missing = sorted(set(tasks) - {t.name for t in ctx.cfg.tasks})
    if missing:
        raise ConfigError(f"experiment.arms[{ctx.arm.name}]: tasks {missing} are not declared in tasks")

    def narrow(raw: dict) -> None:
        raw.pop("experiment", None)
        raw.pop("profiles", None)
        raw["tasks"] = [t for t in raw["tasks"] if t["name"] in tasks]
        raw["seed"], raw["run_dir"] = ctx.seed, str(run_dir)
        if pretrained != "inherit":
            raw["model"]["trunk"]["pretrained"] = pretrained
        if head is not None:
            raw["model"]["heads"] = {tasks[0]: head.model_dump(mode="json")}

    return override_config(ctx.cfg, {**ctx.arm.overrides, **(extra or {})}, f"experiment arm {ctx.arm.name!r}",
                           edit=narrow)


def train_arm(ctx: ArmContext, tasks, run_dir: Path, **kw):
    """Train one model of the arm; its best-epoch decision goes to the arm's audit. Returns
    ``(run_dir, FitResult)``."""
    cfg = arm_config(ctx, tasks, run_dir, **kw)
    resume = _interrupted(cfg, Path(run_dir))
    save_config(cfg, run_dir)
    result = fit(cfg, ctx.data, run_dir, resume=resume, progress=False)
    sel = result.selection
    ctx.decide("best_epoch", reads=sel["reads"], chose=sel["chose"], grid=sel["grid"],
               model=Path(run_dir).name if Path(run_dir) != Path(ctx.run_dir) else "")
    return run_dir, result


def _interrupted(cfg, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an unfinished training of exactly ``cfg`` (its last epoch's checkpoint):
    an experiment stopped mid-arm then loses no finished epoch. Another config trains afresh, and its
    checkpoint is removed first (a kill in the new first epoch must not leave it beside the new config)."""
    last, saved = run_dir / "checkpoints" / "last.ckpt", run_dir / "config.yaml"
    if not last.is_file():
        return False
    try:
        same = saved.is_file() and yaml.safe_load(saved.read_text()) == cfg.model_dump(mode="json")
    except yaml.YAMLError:
        same = False
    if not same:
        log.warning("%s: its checkpoint is of another config (or of none); removed, trained afresh", run_dir)
        last.unlink()
        return False
    log.info("%s: continuing the interrupted training from its last checkpoint", run_dir)
    return True


def _main(ctx) -> str:
    return ctx.cfg.experiment.main_task


def _arm_pretrained(ctx):
    """Trunk start: another arm's best checkpoint, the arm's ``pretrained``, or the config's."""
    if ctx.arm.source_arm:
        if ctx.arm.source_arm not in ctx.arm_dirs:
            raise ConfigError(f"experiment arm {ctx.arm.name!r}: source_arm {ctx.arm.source_arm!r} must be an "
                              f"arm listed before it; finished arms: {sorted(ctx.arm_dirs)}")
        return str(Path(ctx.arm_dirs[ctx.arm.source_arm]) / "checkpoints" / "best.ckpt")
    return ctx.arm.pretrained


@STRATEGIES.register("stl", trains=True)
def stl(ctx: ArmContext) -> ArmOutcome:
    """Single-task learning: one task alone (the main task, or the arm's single ``tasks`` entry,
    e.g. segmentation next to a classification main task), from random init (RI) or pretrained (TL)."""
    tasks = ctx.arm.tasks or [_main(ctx)]
    if len(tasks) != 1:
        raise ConfigError(f"experiment arm {ctx.arm.name!r}: strategy 'stl' trains one task; got tasks {tasks}")
    run, _ = train_arm(ctx, tasks, ctx.run_dir, pretrained=_arm_pretrained(ctx))
    return ArmOutcome({"": run})


@STRATEGIES.register("mtl", trains=True)
def mtl(ctx: ArmContext) -> ArmOutcome:
    """Multi-task learning: main plus auxiliary tasks on one trunk (hard sharing by default)."""
    tasks = ctx.arm.tasks or [_main(ctx)]
    if _main(ctx) not in tasks:
        raise ConfigError(f"experiment arm {ctx.arm.name!r}: tasks {tasks} must include the main task {_main(ctx)!r}")
    run, _ = train_arm(ctx, tasks, ctx.run_dir, pretrained=_arm_pretrained(ctx))
    return ArmOutcome({"": run})


STRATEGIES.register("joint", trains=True)(mtl)  # multi-task training on a pool that includes the target


@STRATEGIES.register("sequential", trains=True)
def sequential(ctx: ArmContext) -> ArmOutcome:
    """Train on the source task(s), keep the trunk, attach a new head, fine-tune on the target."""
    if not ctx.arm.source:
        raise ConfigError(f"experiment arm {ctx.arm.name!r}: strategy 'sequential' needs source: [tasks]")
    base, _ = train_arm(ctx, ctx.arm.source, ctx.run_dir / "source", pretrained=_arm_pretrained(ctx))
    run, _ = train_arm(ctx, [_main(ctx)], ctx.run_dir / "target",
                    pretrained=str(base / "checkpoints" / "best.ckpt"), head=ctx.arm.head)
    return ArmOutcome({"": run}, notes=[f"source model: {base}"])


def lr_grid(ctx: ArmContext, pretrained) -> ArmOutcome:
    """One model per learning rate of ``lrs``; the best validation monitor wins, in the monitored
    metric's own direction (a loss is minimised)."""
    best, best_run, best_lr, reads = -math.inf, None, None, []
    for lr in ctx.arm.lrs:
        run, result = train_arm(ctx, [_main(ctx)], ctx.run_dir / f"lr={lr:g}", pretrained=pretrained,
                                extra={"train.optimizer.lr": lr})
        value = result.best_monitor if result.mode == "max" else -result.best_monitor
        reads = result.selection["reads"]
        if not math.isnan(value) and value > best:
            best, best_run, best_lr = value, run, lr
    if best_run is None:
        raise ConfigError(f"experiment arm {ctx.arm.name!r}: no learning rate gave a finite validation metric")
    ctx.decide("learning_rate", reads=reads, chose=best_lr, grid=list(ctx.arm.lrs))
    return ArmOutcome({"": best_run}, notes=[f"learning rate chosen on validation: {best_run.name}"])


@STRATEGIES.register("finetune", trains=True)
def finetune(ctx: ArmContext) -> ArmOutcome:
    """Fine-tune a (pre)trained trunk on the target over a learning-rate grid; best on validation."""
    return lr_grid(ctx, _arm_pretrained(ctx))


@STRATEGIES.register("scratch", trains=True)
def scratch(ctx: ArmContext) -> ArmOutcome:
    """The same learning-rate grid as ``finetune``, from random weights."""
    return lr_grid(ctx, None)


@STRATEGIES.register("freeze_sweep", trains=True)
def freeze_sweep(ctx: ArmContext) -> ArmOutcome:
    """The same transfer with the first k trunk stages frozen, for each k in ``freeze``."""
    runs = {}
    for k in ctx.arm.freeze:
        run, _ = train_arm(ctx, [_main(ctx)], ctx.run_dir / f"freeze={k}", pretrained=_arm_pretrained(ctx),
                        extra={"train.freeze_stages": k})
        runs[f"freeze={k}"] = run
    return ArmOutcome(runs)


@STRATEGIES.register("feature_extraction", trains=False)
def feature_extraction(ctx: ArmContext) -> ArmOutcome:
    """Frozen trunk -> pooled features -> linear SVM (Mormont et al. 2020).

    C is tuned over ``svm_c`` by 5-fold cross-validation grouped by patient on the training set
    (AUC), then the SVM is refit on the whole training set. Scores are the SVM decision values
    passed through a logistic (binary) or softmax (multiclass) so they read as probabilities; AUC
    depends only on their order.
    """
    scores, sets, c = svm_transfer(ctx, _main(ctx), _arm_pretrained(ctx), splits=ctx.splits)
    return ArmOutcome({}, scores={"scores": scores, "datasets": sets}, notes=[f"linear SVM C={c:g} (grouped 5-fold CV)"])


def svm_transfer(ctx: ArmContext, task: str, pretrained, splits=("val", "test")):
    """Scores of a linear SVM on a frozen trunk's features for ``task``: ({split: {task: ...}}, datasets, C).

    With ``experiment.tta`` the validation and test scores are the mean of the SVM's scores over the
    8 flips/rotations of each image, as for every other arm, and validation is also scored without
    (split ``val_no_tta``).
    """
    cfg = arm_config(ctx, [task], ctx.run_dir, pretrained=pretrained)
    spec = ctx.data.tasks[task]
    tta = ctx.cfg.experiment is not None and ctx.cfg.experiment.tta
    torch.manual_seed(ctx.seed)
    trunk = build_model(cfg, [spec]).trunk.eval().to(default_device())
    feats, sets = {}, {}
    digest = weights_digest(trunk)
    for split in ("train", *splits):
        ds = MultiTaskDataset(ctx.data, split, [task], preset=cfg.data.augmentation, train=False,
                              size=cfg.data.size, in_chans=cfg.model.trunk.in_chans)
        # training: the same per-task limit as training runs, seeded the same way; val/test: the
        # scoring subset every other arm is scored on (the whole split unless limited)
        if split == "train":
            ds = limit_items(ds, cfg.data.limit_train, cfg.seed)
        else:
            ds = scoring_subset(ds, cfg, split)
        sets[split] = ds
        feats[split] = trunk_features(trunk, ds, views=8 if tta and split != "train" else 1, weights=digest)
    clf, c, fit = _fit_svm(feats["train"], ctx.data, sets["train"], task, ctx.arm.svm_c, ctx.seed)
    ctx.decide("svm_c", reads=audit.reads([task], "train"), chose=c, grid=list(ctx.arm.svm_c), model=task, **fit)
    if fit["degenerate"]:
        log.warning("arm %s seed %d: every C of %s gives (near) constant SVM scores on %s: the scores are "
                    "degenerate and get no AUC verdict", ctx.arm.name, ctx.seed, list(ctx.arm.svm_c), task)
    scores = {split: {task: {"y": feats[split][1], "p": _svm_scores(clf, feats[split][0]),
                             "item": np.arange(len(sets[split]))}} for split in splits}
    if tta and "val" in splits:
        scores[NO_TTA_SPLIT] = {task: {**scores["val"][task], "p": _svm_scores(clf, feats["val"][0][:1])}}
        sets[NO_TTA_SPLIT] = sets["val"]
    return scores, {s: sets[s] for s in scores}, c


# decision values whose spread over held-out images is below this are float noise, not a ranking
DEGENERATE_SPREAD = 1e-4


def _fit_svm(train, data, dataset, task, grid, seed):
    """(SVM refit on all of ``train`` at the chosen C, C, record): C by stratified group folds (AUC).

    A C whose held-out decision values barely vary (std < DEGENERATE_SPREAD, as a tiny C gives on
    standardised features) is not a candidate: its AUC ranks rounding noise. When every C is so,
    the best of them is kept and the record says ``degenerate``.
    """
    x, y = train
    x = x[0]
    src = data.source_of(task)
    groups = np.array([str(src.groups[int(r)]) for r in dataset.items_[:, 2]])
    n_splits = max(2, min(5, len(np.unique(groups)), np.bincount(y).min()))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(cv.split(x, y, groups))
    results = {}
    for c in grid:
        aucs, spread = [], []
        for tr, te in folds:
            model = make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=5000, random_state=seed)).fit(x[tr], y[tr])
            d = model.decision_function(x[te])
            spread.append(float(np.std(d, axis=0).max()))
            fold = _fold_auc(y[te], d, model[-1].classes_)
            if math.isfinite(fold):
                aucs.append(fold)
        results[c] = (float(np.mean(aucs)) if aucs else -np.inf, float(np.median(spread)))
    healthy = [c for c in grid if results[c][1] >= DEGENERATE_SPREAD]
    candidates = healthy or list(grid)
    best_c = max(candidates, key=lambda c: results[c][0])   # first of equals: grid order
    final = make_pipeline(StandardScaler(), LinearSVC(C=best_c, max_iter=5000, random_state=seed)).fit(x, y)
    record = {"degenerate": not healthy, "excluded": [c for c in grid if c not in healthy],
              "cv_auc": {str(c): results[c][0] for c in grid}}
    return final, best_c, record


def _fold_auc(y, d, classes) -> float:
    """Macro one-vs-rest AUC of decision values ``d`` over the classes present in ``y`` that the fold's
    SVM learned (a tiny training set can leave a class out of a fold); NaN with fewer than two."""
    present = [c for c in np.unique(y) if c in set(classes)]
    if len(np.unique(y)) < 2 or not present:
        return math.nan
    if d.ndim == 1:        # two classes learned: d scores classes[1]
        return float(roc_auc_score(y == classes[1], d)) if classes[1] in present else math.nan
    col, p = {c: k for k, c in enumerate(classes)}, _softmax(d)   # as sklearn's multi_class="ovr" scores them
    return float(np.mean([roc_auc_score(y == c, p[:, col[c]]) for c in present]))


def _softmax(d):
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _svm_scores(clf, x):
    """Probability-like scores of features ``x`` (views, N, D): the mean over the views."""
    return np.mean([_svm_view_scores(clf, v) for v in x], axis=0)


def _svm_view_scores(clf, x):
    d = clf.decision_function(x)
    if d.ndim == 1:
        p1 = 1 / (1 + np.exp(-d))
        return np.stack([1 - p1, p1], axis=1)
    return _softmax(d)


def create_strategy(name: str, where: str = "experiment.arms[].strategy"):
    """The registered strategy ``name``: a function ``(ArmContext) -> ArmOutcome``."""
    return STRATEGIES.get(name, where)
