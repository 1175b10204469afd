"""Any timm model as a trunk, through timm's ``features_only`` interface.

timm builds the feature extractor (``FeatureListNet`` for ResNets, ``EfficientNetFeatures`` for
EfficientNets, ...) and reports channels and strides in its ``feature_info``; this wrapper maps
that onto the medmtl trunk contract: ``forward_pyramid`` is timm's list of maps and
``stages()[i]`` is every module from the end of stage ``i - 1`` up to the module that produces
``feature_info[i]``, so freezing ``k`` stages freezes exactly what feeds the first ``k`` maps.

``small_input=True`` is supported per model family (the timm module that defines the model):

* ``timm.models.resnet`` (ResNet, ResNeXt, SE-ResNet, ...): the 7x7 stride-2 stem convolution
  becomes a 3x3 stride-1 one (a deep stem keeps its convolutions, the first with stride 1) and
  the max-pool is removed, as in CIFAR ResNets; all reductions drop 4x (the stem map 2x). A
  replaced 7x7 stem is randomly initialised even when the rest is pretrained.
* ``timm.models.efficientnet`` and ``timm.models.mobilenetv3``: the stem convolution keeps its
  weights but gets stride 1; all reductions drop 2x.

Other families raise a ``ValueError`` naming these.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from medmtl.models.trunks._base import Trunk
from medmtl.models.trunks._helpers import channel_stats

SMALL_INPUT_FAMILIES = {
    "timm.models.resnet": "3x3 stride-1 stem convolution, no max-pool (reductions / 4)",
    "timm.models.efficientnet": "stride-1 stem convolution (reductions / 2)",
    "timm.models.mobilenetv3": "stride-1 stem convolution (reductions / 2)",
}


def timm_family(model_name: str) -> str:
    """The timm module that defines ``model_name`` (``timm.models.resnet`` for ``resnet18.a1_in1k``)."""
    return timm.models.model_entrypoint(timm.models.split_model_name_tag(model_name)[0]).__module__


def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _feature_paths(model: nn.Module) -> list[str]:
    """Submodule path, inside the features model, that produces each ``feature_info`` entry."""
    if hasattr(model, "return_layers"):
        # FeatureListNet renames flattened modules ("stages.0" -> "stages_0") and keeps the map.
        return [k for k, _ in sorted(model.return_layers.items(), key=lambda kv: int(kv[1]))]
    paths = []
    for info in model.feature_info.get_dicts():
        # FeatureGetterNet wraps the whole network as ``model``; its feature names omit that.
        candidates = [info["module"], f"model.{info['module']}"]
        found = [p for p in candidates if _has_submodule(model, p)]
        if not found:
            raise ValueError(f"timm feature module {info['module']!r} is not a submodule of "
                             f"{type(model).__name__}, so its stages cannot be found")
        paths.append(found[0])
    return paths


def _units(module: nn.Module, targets: list[str], prefix: str = "") -> list[str]:
    """Paths of the modules, in execution order, at the depth where every target is one unit.

    Relies on timm's feature extractors registering their children in the order ``forward``
    runs them, which holds for the list/dict nets and the EfficientNet/MobileNet feature classes.
    """
    out = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if any(t.startswith(path + ".") for t in targets):
            out.extend(_units(child, targets, path + "."))
        else:
            out.append(path)
    return out


def _group_stages(units: list[str], targets: list[str], model_name: str) -> list[list[str]]:
    positions = [units.index(t) if t in units else -1 for t in targets]
    if -1 in positions or positions != sorted(positions):
        raise ValueError(f"timm model {model_name!r}: feature modules {targets} are not in the "
                         f"order of its modules {units}, so stages cannot be split")
    groups, start = [], 0
    for end in positions:
        groups.append(units[start:end + 1])
        start = end + 1
    # Modules after the last feature (rare; a norm that timm keeps) belong to the last stage
    # so that freezing every stage still freezes every parameter.
    groups[-1].extend(units[start:])
    return groups


def _shrink_resnet_stem(model: nn.Module, in_chans: int) -> None:
    conv1 = model.get_submodule("conv1")
    if isinstance(conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(in_chans, conv1.out_channels, 3, 1, 1, bias=False)
    else:
        first = next(m for m in conv1.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()


def _shrink_effnet_stem(model: nn.Module) -> None:
    # The stem is a 3x3 conv padded by 1 (or TF "same", computed per call), so stride 1
    # keeps the size and the pretrained kernel stays valid.
    model.get_submodule("conv_stem").stride = (1, 1)


class TimmTrunk(Trunk):
    """A timm ``features_only`` network behind the trunk contract.

    Args:
        model_name: any name in ``timm.list_models()``, optionally with a weight tag.
        in_chans: input channels (timm adapts the first convolution when loading weights).
        small_input: shrink the stem for 28-64 px images; see the module docstring per family.
        pretrained: let timm load its own weights (needs its download cache or the network).
        **kwargs: passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``,
            ``out_indices``, ``bn_eps``, ``pad_type``, ...).

    Raises:
        ValueError: ``small_input=True`` for an unsupported family, or a timm model whose
            feature modules cannot be split into stages.
    """

    def __init__(self, model_name: str, in_chans: int = 3, small_input: bool = False,
                 pretrained: bool = False, **kwargs):
        super().__init__()
        self.model_name, self.in_chans, self.small_input = model_name, in_chans, small_input
        self.pretrained, self.kwargs = pretrained, kwargs
        family = timm_family(model_name)
        if small_input and family not in SMALL_INPUT_FAMILIES:
            raise ValueError(
                f"small_input=True is not supported for timm model {model_name!r} ({family}); it is "
                f"supported for {sorted(SMALL_INPUT_FAMILIES)} and the medmtl trunks resnext29 "
                "(natively) and alexnet; use small_input=False with larger (e.g. resized) images")
        self.model = timm.create_model(model_name, features_only=True, pretrained=pretrained,
                                       in_chans=in_chans, **kwargs)
        targets = _feature_paths(self.model)
        info = [dict(d) for d in self.model.feature_info.get_dicts()]
        if small_input:
            self._shrink_stem(family, targets, info)
        units = _units(self.model, targets)
        self._stage_paths = _group_stages(units, targets, model_name)
        self.feature_info = [{"num_chs": d["num_chs"], "reduction": d["reduction"], "module": f"model.{t}"}
                             for d, t in zip(info, targets)]
        self.num_features = self.feature_info[-1]["num_chs"]
        cfg = self.model.pretrained_cfg
        self.pretrained_cfg = {"mean": channel_stats(cfg.get("mean", (0.5,) * 3), in_chans),
                               "std": channel_stats(cfg.get("std", (0.5,) * 3), in_chans),
                               "input_size": (in_chans, *tuple(cfg.get("input_size", (3, 224, 224)))[1:]),
                               "source": f"timm:{cfg.get('architecture')}.{cfg.get('tag')}" if pretrained
                               else "random"}

    def _shrink_stem(self, family: str, targets: list[str], info: list[dict]) -> None:
        units = _units(self.model, targets)
        if family == "timm.models.resnet":
            if not (_has_submodule(self.model, "conv1") and "maxpool" in units):
                raise ValueError(f"small_input=True: timm model {self.model_name!r} has no conv1/maxpool stem")
            _shrink_resnet_stem(self.model, self.in_chans)
            pool_at = units.index("maxpool")
            for d, t in zip(info, targets):
                d["reduction"] = max(1, d["reduction"] // (4 if units.index(t) > pool_at else 2))
        else:
            if not _has_submodule(self.model, "conv_stem"):
                raise ValueError(f"small_input=True: timm model {self.model_name!r} has no conv_stem")
            _shrink_effnet_stem(self.model)
            for d in info:
                d["reduction"] = max(1, d["reduction"] // 2)

    def stages(self) -> list[nn.Module]:
        # Built on each call from modules the features model owns, so no parameter is
        # registered twice (which would duplicate state_dict keys).
        return [nn.Sequential(*(self.model.get_submodule(p) for p in paths)) for paths in self._stage_paths]

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))
