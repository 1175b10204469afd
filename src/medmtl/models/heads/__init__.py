"""Heads (task-specific outputs). Importing this package registers them."""
from medmtl.models.heads._base import HEADS, Features, Head, HeadInfo
from medmtl.models.heads._common import CLASSIFICATION_KINDS, to_probabilities
from medmtl.models.heads.aux_conditioned import AuxConditionedHead
from medmtl.models.heads.box import BoxHead
from medmtl.models.heads.build import DEFAULT_HEADS, build_heads
from medmtl.models.heads.fc100_fc2 import Fc100Fc2Head
from medmtl.models.heads.feature_transfer import FeatureTransferHead
from medmtl.models.heads.linear import LinearHead
from medmtl.models.heads.segmentation import SegmentationHead
from medmtl.models.heads.transfer import TransferHead

__all__ = ["CLASSIFICATION_KINDS", "DEFAULT_HEADS", "HEADS", "HeadInfo", "AuxConditionedHead", "BoxHead", "Fc100Fc2Head",
           "FeatureTransferHead", "Features", "Head", "LinearHead", "SegmentationHead", "TransferHead", "build_heads",
           "to_probabilities"]
