"""Trunks (shared feature extractors). Importing this package registers them.

Registered medmtl trunks: ``test_tiny``, ``resnext29``, ``alexnet``; every timm model name is a
trunk too, through :class:`TimmTrunk` (``create_trunk("resnet18")``).
"""
from medmtl.models.trunks import alexnet, resnext29  # noqa: F401  (registers the trunks)
from medmtl.models.trunks._base import TRUNKS, TinyTrunk, Trunk
from medmtl.models.trunks._factory import check_trunk_name, create_trunk
from medmtl.models.trunks._pretrained import (
    EFFICIENTNET_LITE0_PRETRAINED_CFG,
    EFFICIENTNET_LITE0_TF_KWARGS,
    TrunkCheckpoint,
    load_imagenet_efficientnet_lite0,
    read_trunk_checkpoint,
    save_trunk,
)
from medmtl.models.trunks.alexnet import AlexNetTrunk
from medmtl.models.trunks.resnext29 import ResNeXt29
from medmtl.models.trunks.timm_trunk import TimmTrunk

__all__ = [
    "EFFICIENTNET_LITE0_PRETRAINED_CFG",
    "EFFICIENTNET_LITE0_TF_KWARGS",
    "TRUNKS",
    "AlexNetTrunk",
    "ResNeXt29",
    "TinyTrunk",
    "TimmTrunk",
    "Trunk",
    "TrunkCheckpoint",
    "check_trunk_name",
    "create_trunk",
    "load_imagenet_efficientnet_lite0",
    "read_trunk_checkpoint",
    "save_trunk",
]

