"""Every name a config holds, checked against its registry before anything runs.

The schema (:mod:`medmtl.config`) checks structure, types and ranges; it sits below the layers
whose registries give the names, so the names are checked here, at the top of the component
layers, by :func:`check_config`. ``medmtl.api`` runs it on every config it loads and
``run_experiment`` on every config it runs, so a misspelled strategy of the third arm, a weighting
``uncertanty`` or a head option ``hiden: 3`` is refused with its key path before any training.
Each arm's and application's overrides, and each LOTO grid point, are applied and the resulting
config checked too, since a name can hide in an override (quick mode is checked by
``run_experiment`` on the config it makes from it).
"""
from __future__ import annotations

from pathlib import Path

from medmtl._registry import UnknownNameError, check_kwargs, did_you_mean
from medmtl.config import override_config
from medmtl.data.samplers import SAMPLERS
from medmtl.data.splits import SPLITTERS
from medmtl.data.transforms import PRESETS
from medmtl.engine.optim import OPTIMIZERS, SCHEDULERS
from medmtl.errors import ConfigError
from medmtl.models.heads.build import check_head
from medmtl.models.trunks import TRUNKS, check_trunk_name
from medmtl.mtl.weightings import WEIGHTINGS, check_weighting_kwargs
from medmtl.protocols.comparison import compared_pairs
from medmtl.protocols.strategies import STRATEGIES

KEYWORDS = ("imagenet", "inherit")


def check_config(cfg):
    """Return ``cfg`` when every registered name and option in it is valid; otherwise raise one
    :class:`~medmtl.errors.ConfigError` listing each bad key path, the allowed names and a close match."""
    errors = _errors(cfg)
    base = set(errors)
    for where, overrides in _override_sets(cfg):
        errors += [e for e in _errors_with(cfg, overrides, where) if e not in base and e not in errors]
    if errors:
        raise ConfigError(f"{len(errors)} invalid setting(s)\n  " + "\n  ".join(errors))
    return cfg


def _override_sets(cfg):
    """(key path, dotted overrides) of every place a config changes itself before a training. The
    profiles are not among them: one applies only to a ``--profile`` run, and ``run_experiment``
    checks the config it makes from it before running that."""
    exp = cfg.experiment
    if exp is not None:
        for i, arm in enumerate(exp.arms):
            if arm.overrides:
                yield f"experiment.arms[{i}].overrides", arm.overrides
        for name, app in exp.applications.items():
            if app.overrides:
                yield f"experiment.applications.{name}.overrides", app.overrides
    if cfg.loto is not None:
        keys = sorted(cfg.loto.grid)
        for key in keys:
            for k, value in enumerate(cfg.loto.grid[key]):
                yield f"loto.grid.{key}[{k}]", {key: value}


def _errors_with(cfg, overrides: dict, where: str) -> list[str]:
    try:
        changed = override_config(cfg, overrides, where)
    except ConfigError as exc:
        # the schema's message lists one "  key: problem" line per setting under a header line
        lines = str(exc).splitlines()
        return [f"{where}: {line.strip()}" for line in lines[1:]] if len(lines) > 1 else [str(exc)]
    return [f"{where}: {e}" for e in _errors(changed)]


def _errors(cfg) -> list[str]:
    errors: list[str] = []
    tasks = [t.name for t in cfg.tasks]

    def name(registry, value, where):
        try:
            registry.check(value, where)
            return True
        except UnknownNameError as exc:
            errors.append(str(exc))
            return False

    def task(value, where, allowed=tasks):
        if value not in allowed:
            errors.append(f"{where}: {value!r} is not a declared task; tasks are {allowed}{did_you_mean(value, allowed)}")

    def kwargs(fn, given, where, skip=()):
        try:
            check_kwargs(fn, given, where, skip=skip)
        except ConfigError as exc:
            errors.append(str(exc))

    def head(h, where):
        try:
            check_head(h.name, h.kwargs, where)
        except ConfigError as exc:   # an unknown name (UnknownNameError) or an unknown option
            errors.append(str(exc))

    def weights(value, where):
        if value is not None and value not in KEYWORDS and not Path(value).is_file():
            errors.append(f"{where}: {value!r} is neither 'imagenet' nor an existing file (a trunk saved by medmtl)")

    for i, t in enumerate(cfg.tasks):
        name(SPLITTERS, t.split.method, f"tasks[{i}].split.method")
    name(SAMPLERS, cfg.data.sampler, "data.sampler")
    name(PRESETS, cfg.data.augmentation, "data.augmentation")
    trunk = cfg.model.trunk
    try:
        check_trunk_name(trunk.name)
        if trunk.name in TRUNKS:
            kwargs(TRUNKS.get(trunk.name), trunk.kwargs, "model.trunk.kwargs", ("in_chans", "small_input"))
    except ValueError as exc:
        errors.append(f"model.trunk.name: {exc}")
    weights(trunk.pretrained, "model.trunk.pretrained")
    for key, h in cfg.model.heads.items():
        head(h, f"model.heads.{key}")
        for t in h.tasks or []:
            task(t, f"model.heads.{key}.tasks")
    tc = cfg.train
    if name(WEIGHTINGS, tc.weighting.name, "train.weighting.name"):
        try:
            check_weighting_kwargs(tc.weighting.name, tc.weighting.kwargs, "train.weighting")
        except ConfigError as exc:
            errors.append(str(exc))
    name(OPTIMIZERS, tc.optimizer.name, "train.optimizer.name")
    name(SCHEDULERS, tc.scheduler.name, "train.scheduler.name")
    monitor = tc.early_stopping.monitor
    if monitor not in ("main", "all", *tasks):
        errors.append(f"train.early_stopping.monitor: {monitor!r} is neither 'main', 'all' nor a task; tasks are "
                      f"{tasks}{did_you_mean(monitor, ['main', 'all', *tasks])}")
    exp = cfg.experiment
    if exp is not None:
        if exp.main_task is not None:
            task(exp.main_task, "experiment.main_task")
        for t in exp.evaluate or []:
            task(t, "experiment.evaluate")
        earlier: list[str] = []
        for i, arm in enumerate(exp.arms):
            where = f"experiment.arms[{i}]"
            name(STRATEGIES, arm.strategy, f"{where}.strategy")
            for t in arm.tasks or []:
                task(t, f"{where}.tasks")
            for t in arm.source or []:
                task(t, f"{where}.source")
            if arm.head is not None:
                head(arm.head, f"{where}.head")
            weights(arm.pretrained, f"{where}.pretrained")
            if arm.source_arm is not None and arm.source_arm not in earlier:
                errors.append(f"{where}.source_arm: {arm.source_arm!r} must name an arm listed before it; earlier "
                              f"arms: {earlier}{did_you_mean(arm.source_arm, earlier)}")
            earlier.append(arm.name)
        if exp.cv is not None and exp.cv.criterion == "reference":
            names = [a.name for a in exp.arms]
            compared = {n for pair in compared_pairs([(a.name, a.strategy) for a in exp.arms], exp.comparisons)
                        for n in pair}
            if exp.cv.reference_arm not in names:
                errors.append(f"experiment.cv.reference_arm: {exp.cv.reference_arm!r} is not an arm; arms are "
                              f"{names}{did_you_mean(exp.cv.reference_arm, names)}")
            elif exp.cv.reference_arm in compared:
                errors.append(f"experiment.cv.reference_arm: {exp.cv.reference_arm!r} is compared "
                              f"({sorted(compared)} are); choosing the split by a compared arm's validation AUC "
                              "favours it: use an arm no comparison uses, or criterion: balance")
        for key, app in exp.applications.items():
            task(app.main_task, f"experiment.applications.{key}.main_task")
            for t in app.tasks or []:
                task(t, f"experiment.applications.{key}.tasks")
    if cfg.loto is not None:
        for t in cfg.loto.pool:
            task(t, "loto.pool")
        for k, group in enumerate(cfg.loto.related):
            for t in group:
                task(t, f"loto.related[{k}]", cfg.loto.pool)
        for t in cfg.loto.targets or []:
            task(t, "loto.targets", cfg.loto.pool)
    return errors
