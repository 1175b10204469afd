"""The one experiment configuration schema (YAML validated by pydantic v2).

Every section is a pydantic model with ``extra="forbid"`` so a misspelled key is an error that
names its path (``tasks[2].reader.root``). Readers are a union discriminated on ``name``, built
from the reader registry, so a new reader needs no change here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from medmtl._registry import did_you_mean
from medmtl.data.readers import READERS
from medmtl.data.readers._base import AnyPath, expand_path
from medmtl.kinds import TaskKind
from medmtl.metrics import METRICS, default_metric

ReaderConfig = Annotated[Union[tuple(READERS.get(n) for n in READERS)], Field(discriminator="name")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageConfig(_Section):
    """How images are decoded into the cache: square ``size`` pixels, grey ``L`` or colour ``RGB``."""

    size: int = Field(224, ge=8, le=2048)
    mode: Literal["L", "RGB"] = "RGB"


class SplitConfig(_Section):
    """How a task's images are divided.

    ``official`` keeps the dataset's own split (``val_fraction`` carves a validation set out of
    train when the official split has none); ``holdout`` makes seeded, stratified, group-aware
    train/val/test ``fractions``; ``kfold`` uses fold ``fold`` of ``n_splits`` as test
    (StratifiedGroupKFold) and carves ``val_fraction`` of the rest for validation.
    """

    method: str = "holdout"   # a registered splitter (medmtl.data.splits.SPLITTERS)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    n_splits: int = Field(5, ge=2)
    fold: int = Field(0, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions (train, val, test) must be >= 0 and sum to 1, got {list(self.fractions)}")
        if self.fold >= self.n_splits:
            raise ValueError(f"fold={self.fold} must be < n_splits={self.n_splits}")
        return self


class TaskConfig(_Section):
    """One learning task: what to predict, from which reader target, and its role in training."""

    name: str
    kind: TaskKind
    target: str
    reader: ReaderConfig
    classes: list[str] | None = None
    # a subset of the reader's classes (BUSI benign vs malignant without normal): ``drop`` leaves
    # images of unlisted classes unlabelled for this task (masked, never imputed); ``error`` refuses them
    unlisted: Literal["error", "drop"] = "error"
    # a continuous reader target (BUSI lesion_size) made binary: ``median`` = above the median of
    # the task's TRAINING-split values (never val/test, so no leakage); classes default to low/high
    binarize: Literal["median"] | None = None
    role: Literal["main", "auxiliary"] = "main"
    loss_weight: float = Field(1.0, ge=0.0)
    metric: str | None = None
    group_key: str = "patient"
    domain: str | None = None
    evaluate_at: Literal["image", "group"] = "image"
    image: ImageConfig = ImageConfig()
    split: SplitConfig = SplitConfig()

    @field_validator("name")
    @classmethod
    def _snake(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", v):
            raise ValueError(f"task names are lowercase snake_case (letters, digits, _), got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.metric is None:
            self.metric = default_metric(self.kind)
        elif self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r} is not a registered metric; choose one of "
                             f"{METRICS.list()}{did_you_mean(self.metric, METRICS)}")
        elif self.kind not in METRICS.meta(self.metric).kinds:
            raise ValueError(f"metric={self.metric!r} is not defined for kind {self.kind!r}; it is for "
                             f"{sorted(METRICS.meta(self.metric).kinds)}")
        if self.classes is not None:
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes repeat a name: {self.classes}")
            if self.kind == "binary" and len(self.classes) != 2:
                raise ValueError(f"a binary task has exactly 2 classes, got {self.classes}")
        elif self.unlisted == "drop":
            raise ValueError("unlisted: drop needs classes (the subset to keep)")
        if self.binarize is not None and self.kind != "binary":
            raise ValueError(f"task {self.name!r}: binarize={self.binarize!r} makes a binary task; "
                             f"set kind: binary (got kind: {self.kind})")
        return self


class DuplicatesConfig(_Section):
    """Duplicate search inside one dataset.

    ``exact`` compares a hash of the decoded pixels; ``near`` a 64-bit perceptual hash with at most
    ``max_distance`` differing bits, confirmed by a grey-thumbnail correlation of at least
    ``min_correlation`` (the hash alone pairs unrelated mammograms). ``policy: group`` puts duplicates in the same group (so the
    same split); ``report`` only counts them.
    """

    exact: bool = True
    near: bool = True
    max_distance: int = Field(4, ge=0, le=32)
    min_correlation: float = Field(0.99, gt=0.0, le=1.0)
    policy: Literal["group", "report"] = "group"


class LeakageConfig(_Section):
    """Cross-dataset copy detection (one image filed in two datasets) and what to do about it.

    ``policy: exclude`` removes from training any image that is a copy of a validation or test
    image of an evaluated task; ``error`` stops the run instead; ``off`` disables the search.
    Two images are copies when their grey centre-cropped thumbnails (``thumbnail`` px) correlate
    at least ``min_correlation`` at half that size (same layout) and their band-pass detail
    correlates at least ``min_detail_correlation`` (same texture); see ``medmtl.data.leakage``.
    """

    policy: Literal["exclude", "error", "off"] = "exclude"

    @field_validator("policy", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        # YAML 1.1 reads a bare `off` as the boolean false; that is what the user meant
        return "off" if v is False else v
    min_correlation: float = Field(0.9, gt=0.0, le=1.0)
    min_detail_correlation: float = Field(0.8, gt=0.0, le=1.0)
    thumbnail: int = Field(32, ge=8, le=128)


class DataLoaderConfig(_Section):
    """How training batches are made.

    ``size`` is the side of the images fed to the network (default: the largest cached size of
    the tasks). ``limit_train``/``limit_eval`` keep a seeded subset of that many images per task
    (quick CPU runs and tests); the run log says so. ``limit_test`` does the same for the final
    scoring of the test split (default: the whole split); the subset is the same for every arm and
    seed, so paired tests still compare the same cases, and the report says it is a subset.
    """

    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    sampler: str = "balanced"
    augmentation: str = "s2"
    size: int | None = Field(None, ge=8)
    limit_train: int | None = Field(None, ge=1)
    limit_eval: int | None = Field(None, ge=1)
    limit_test: int | None = Field(None, ge=1)


def _weights_path(value):
    """``pretrained``: a keyword (``imagenet``, an arm's ``inherit``) or None stay as they are; a path
    gets ``$VARS`` and ``~`` expanded like the task paths, and an unset variable is an error here,
    not a missing file after data preparation."""
    if value is None or value in ("imagenet", "inherit"):
        return value
    text = str(expand_path(str(value)))
    if "$" in text:
        raise ValueError(f"pretrained={value!r}: an environment variable in it is not set (expanded to {text!r})")
    return text


WeightsPath = Annotated[str | None, BeforeValidator(_weights_path)]


class TrunkConfig(_Section):
    """The shared trunk: a medmtl trunk (``resnext29``, ``alexnet``) or any timm model name.

    ``pretrained``: ``imagenet`` or a path to a medmtl checkpoint whose trunk is loaded.
    ``kwargs`` go to the trunk's constructor (e.g. ``width: 0.25`` for a narrow ResNeXt-29).
    """

    name: str = "resnet18"
    pretrained: WeightsPath = None
    in_chans: int = Field(3, ge=1, le=3)
    small_input: bool = False
    kwargs: dict[str, Any] = {}


class HeadConfig(_Section):
    """A head for one task, or for several (``tasks``) when the head joins them."""

    name: str
    tasks: list[str] | None = None
    kwargs: dict[str, Any] = {}


class ModelConfig(_Section):
    """Trunk, heads (default per task kind: linear, segmentation, box) and the sharing scheme."""

    trunk: TrunkConfig = TrunkConfig()
    heads: dict[str, HeadConfig] = {}
    sharing: Literal["hard", "soft"] = "hard"
    soft_weight: float = Field(1e-3, ge=0.0)


class OptimizerConfig(_Section):
    """``lr`` for the heads is ``lr * head_lr_mult`` (tau); the trunk uses ``trunk_lr`` or ``lr``."""

    name: str = "sgd"   # a registered optimiser (medmtl.engine.optim.OPTIMIZERS)
    lr: float = Field(1e-2, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    head_lr_mult: float = Field(1.0, gt=0.0)
    trunk_lr: float | None = Field(None, ge=0.0)


class SchedulerConfig(_Section):
    """``step`` (every ``step_size`` epochs x ``gamma``), ``multistep`` (x ``gamma`` at each epoch of
    ``milestones``, as MedMNIST's recipe: 50 and 75 of 100), ``cosine`` (to ``min_lr``), or ``plateau``
    (x ``gamma`` after ``patience`` epochs without improvement of the monitored metric)."""

    name: str = "none"   # a registered scheduler (medmtl.engine.optim.SCHEDULERS)
    step_size: int = Field(10, ge=1)
    milestones: list[int] = []
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    patience: int = Field(3, ge=0)
    min_lr: float = Field(0.0, ge=0.0)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v):
        if any(b <= a for a, b in zip(v, v[1:])) or any(m < 1 for m in v):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {v}")
        return v


class WarmupConfig(_Section):
    """Heads-only training first: the trunk is frozen, batch norms in eval mode (Mormont et al.)."""

    steps: int = Field(0, ge=0)
    epochs: int = Field(0, ge=0)
    lr: float | None = Field(None, gt=0.0)


class WeightingConfig(_Section):
    name: str = "mean"
    kwargs: dict[str, Any] = {}


class EarlyStoppingConfig(_Section):
    """Stop when the monitored validation metric has not improved for ``patience`` epochs.

    ``monitor``: ``main`` (mean of the main tasks' metrics), ``all`` (mean over tasks), or a task name.
    """

    monitor: str = "main"
    patience: int | None = Field(None, ge=1)
    min_delta: float = 0.0


class TrainConfig(_Section):
    """The training loop. ``precision`` and ``devices`` go to Lightning Fabric.

    ``deterministic``: on a GPU, cuDNN and torch use deterministic kernels (torch warns where an
    op has none), so that the same seed gives the same numbers and a resumed run the same
    weights; ``false`` lets cuDNN pick the fastest, non-reproducible, kernels.

    ``channels_last``: the model's 4-d weights in channels-last memory order, so that oneDNN (CPU)
    and cuDNN (GPU) run their NHWC convolution kernels; measured by ``make bench`` (part
    ``layout``): on this 2-core CPU a training step takes about 0.5x the time for EfficientNet-Lite0 and
    0.8x for ResNeXt-29 and ResNet-18. Numbers differ from a contiguous run by floating-point order only.
    """

    epochs: int = Field(10, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    warmup: WarmupConfig = WarmupConfig()
    weighting: WeightingConfig = WeightingConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    freeze_stages: int = Field(0, ge=0)
    bn_adapt_batches: int = Field(0, ge=0)
    grad_rescale: bool = False
    grad_clip: float | None = Field(None, gt=0.0)
    accelerator: str = "auto"
    devices: int = Field(1, ge=1)
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    deterministic: bool = True
    channels_last: bool = True
    mlflow: bool = True


class ArmConfig(_Section):
    """One arm of a comparison: a registered strategy and its settings.

    ``tasks``: the tasks trained together (``stl``: one task, the main task by default;
    ``mtl``/``joint``: main plus auxiliary/pool tasks). ``source``: the source tasks of ``sequential`` transfer.
    ``source_arm``: take the trunk of another arm's model (``feature_extraction``, ``finetune``).
    ``pretrained``: the trunk's starting weights when no ``source_arm`` (``imagenet``, a path, or
    null for random init). ``head``: the new head for the target (``sequential``). ``lrs``: the
    fine-tuning learning-rate grid; ``freeze``: the freezing depths of ``freeze_sweep``; ``svm_c``:
    the C grid of the linear SVM. ``overrides``: dotted config keys set for this arm only.
    """

    name: str
    strategy: str
    tasks: list[str] | None = None
    source: list[str] | None = None
    source_arm: str | None = None
    pretrained: WeightsPath = "inherit"
    head: HeadConfig | None = None
    lrs: list[float] = [1e-3, 1e-4, 1e-5, 1e-6]
    freeze: list[int] = [0, 1, 2, 3]
    svm_c: list[float] = [10.0 ** k for k in range(-10, 1)]
    overrides: dict[str, Any] = {}


class CVConfig(_Section):
    """Case-grouped stratified ``n_splits``-fold CV of the main task on a representative split,
    chosen among ``candidates`` seeded splits.

    ``criterion: balance`` (default) trains nothing: the split whose test folds are closest to the
    whole set's class mix and most even in cases is chosen. ``reference`` is the study's criterion
    (Samala et al.: the smallest spread of validation AUC over the folds, then the highest mean) with
    the model of ``reference_arm``, an arm that no comparison uses: ranking splits by an arm that is
    compared would pick the split that flatters it.
    """

    n_splits: int = Field(4, ge=2)
    candidates: int = Field(10, ge=1)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    criterion: Literal["balance", "reference"] = "balance"
    reference_arm: str | None = None

    @model_validator(mode="after")
    def _reference(self):
        if self.criterion == "reference" and not self.reference_arm:
            raise ValueError("criterion: reference needs reference_arm (an arm that no comparison uses)")
        return self


class ReferenceValue(_Section):
    """One published number to set beside ours: ``arm``'s ``metric`` on ``task``/``split`` (our
    value is the mean over seeds). ``scale`` converts ours to the paper's unit (100 for percent).

    ``read_from: results`` takes ours from the scored predictions (val/test); ``history`` from the
    best epoch of a training run's ``history.csv`` (training accuracy, validation loss, auxiliary
    tasks), ``model`` naming a sub-run of the arm (``source`` of a sequential transfer).
    """

    label: str
    arm: str
    task: str
    split: Literal["train", "val", "test"] = "test"
    metric: str = "auc"
    published: float
    scale: float = Field(1.0, gt=0.0)
    read_from: Literal["results", "history"] = "results"
    model: str = ""


class ReferenceConfig(_Section):
    """Published results of the study a config follows, typed in by hand and labelled as such."""

    source: str
    note: str = ""
    values: list[ReferenceValue] = []


class ApplicationConfig(_Section):
    """One application of a study: its main task, the tasks multi-task arms train (``tasks``) and
    dotted ``overrides`` for the whole config (applied before each arm's own overrides)."""

    main_task: str
    tasks: list[str] | None = None
    overrides: dict[str, Any] = {}


class ExperimentSection(_Section):
    """A comparison of arms on one main task, repeated over ``seeds``; ``tta`` averages test scores
    over the 8 flips and rotations.

    ``applications`` runs every arm once per application (each with its own main task), into
    ``applications/<name>/`` of the run dir, with one report for all of them. ``comparisons``: pairs
    of arms the report tests against each other (paired DeLong per task, Holm-corrected; with
    several seeds also the 2-std rule and Wilcoxon); by default every multi-task arm against every
    single-task arm.
    """

    main_task: str | None = None
    seeds: list[int] = [0]
    arms: list[ArmConfig] = Field(min_length=1)
    tta: bool = False
    cv: CVConfig | None = None
    applications: dict[str, ApplicationConfig] = {}
    reference: ReferenceConfig | None = None
    # the tasks scored on val/test (classification into predictions.csv, segmentation and detection
    # per image into predictions_dense.csv); None: the main task only
    evaluate: list[str] | None = None
    comparisons: list[tuple[str, str]] = []

    @field_validator("comparisons")
    @classmethod
    def _pairs(cls, v):
        for a, b in v:
            if a == b:
                raise ValueError(f"a comparison needs two different arms, got [{a}, {b}]")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.main_task is None and not self.applications:
            raise ValueError("experiment needs main_task (or applications, each with its main_task)")
        names = [a.name for a in self.arms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"arm names must be unique; repeated: {dup}")
        return self


class LOTOConfig(_Section):
    """Leave-one-task-out over a pool (Mormont et al. 2020).

    For each left-out group (a task, or tasks declared ``related`` and left out together), each
    combination of the ``grid`` (dotted config keys -> values) and each seed, a multi-task model is
    trained on the rest of the pool and its trunk scored on the left-out tasks by feature extraction
    (validation AUC). For a target task the combination with the best average rank over the OTHER
    tasks is chosen, and its model is transferred to the target by ``transfer`` protocols and tested.

    ``targets``: the tasks left out and transferred to (each with its related tasks); ``None`` = the
    whole pool. The paper also left out only some of its tasks; the others always train.
    ``joint``: also train on the whole pool (targets included) per combination and seed; a target's
    combination is chosen on its validation set (arm ``loto_joint``). ``artifact``: save the trunk of
    the whole-pool model of the combination with the best average rank over every left-out task as
    ``artifacts/pool_trunk.pt`` with a model card (``model.trunk.pretrained`` accepts the file).
    """

    pool: list[str] = Field(min_length=2)
    related: list[list[str]] = []
    targets: list[str] | None = None
    grid: dict[str, list[Any]] = {}
    seeds: list[int] = [0]
    transfer: list[Literal["feature_extraction", "finetune"]] = ["feature_extraction", "finetune"]
    joint: bool = False
    artifact: bool = False
    lrs: list[float] = [1e-3, 1e-4]
    svm_c: list[float] = [1e-4, 1e-2, 1.0]

    def arm_names(self) -> list[str]:
        """The arms this protocol adds to the results (``loto_<transfer>``, ``loto_joint``)."""
        return [f"loto_{t}" for t in self.transfer] + (["loto_joint"] if self.joint else [])


def default_run_dir(name: str) -> Path:
    """Where a config's runs go when it sets no ``run_dir`` (a profile's: ``default_run_dir(f"{name}-{profile}")``)."""
    return Path("runs") / name


class ExperimentConfig(_Section):
    """The whole experiment. Paths accept ``${MEDMTL_DATA}``, other ``$VARS`` and ``~``.

    ``profiles``: named blocks of dotted overrides (``quick``: a CPU version in minutes, ``standard``:
    an answer on a CPU in under an hour, ...), applied by ``medmtl run --profile NAME``; ``profile``
    records the one a run applied (set by the run, not by hand).
    """

    name: str = "experiment"
    seed: int = 0
    run_dir: AnyPath | None = None
    cache_dir: AnyPath = Path("runs/cache")
    tasks: list[TaskConfig] = Field(min_length=1)
    duplicates: DuplicatesConfig = DuplicatesConfig()
    leakage: LeakageConfig = LeakageConfig()
    data: DataLoaderConfig = DataLoaderConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    experiment: ExperimentSection | None = None
    loto: LOTOConfig | None = None
    profiles: dict[str, dict[str, Any]] = {}
    profile: str | None = None
    decode_workers: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _quick_block(cls, raw):
        # ``quick:`` is the older spelling of ``profiles: {quick: ...}``; configs and run dirs have it
        if isinstance(raw, dict) and "quick" in raw:
            raw = dict(raw)
            quick = raw.pop("quick")
            profiles = dict(raw.get("profiles") or {})
            if "quick" in profiles and quick:
                raise ValueError("the config has both a 'quick' block and profiles.quick; keep one")
            profiles.setdefault("quick", quick or {})
            raw["profiles"] = profiles
        return raw

    @model_validator(mode="after")
    def _check(self):
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task names must be unique; repeated: {dup}")
        if self.run_dir is None:
            self.run_dir = default_run_dir(self.name)
        if self.experiment is not None:
            # the LOTO protocol's arms (loto_<transfer>, loto_joint) are compared like the experiment's own
            names = [a.name for a in self.experiment.arms] + (self.loto.arm_names() if self.loto else [])
            unknown = sorted({n for pair in self.experiment.comparisons for n in pair} - set(names))
            if unknown:
                raise ValueError(f"experiment.comparisons name arms {unknown} that are not in experiment.arms"
                                 f"{' or the LOTO arms' if self.loto else ''} {names}")
        return self

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"no task {name!r}; the config declares {[t.name for t in self.tasks]}{did_you_mean(name, [t.name for t in self.tasks])}")
