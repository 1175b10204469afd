"""Multi-task loss weightings, one per file, all registered in ``WEIGHTINGS``.

Importing this package registers every weighting. Loss-based: ``mean``, ``equal``, ``fixed``,
``main_aux``, ``spearman``, ``uncertainty``, ``dwa``, ``rlw``. Gradient-based through TorchJD
(registry flag ``needs_per_task_grads``): ``upgrad``, ``pcgrad``, ``cagrad``, ``nashmtl``, ``mgda``.

Example:
    >>> w = create_weighting("main_aux").setup(tasks)          # doctest: +SKIP
    >>> total, weights = w({"severity": l0, "tissue": l1})     # doctest: +SKIP
"""
from medmtl.mtl.weightings._base import WEIGHTINGS, Weighting, WeightingInfo, check_weighting_kwargs, create_weighting
from medmtl.mtl.weightings._jacobian import JacobianWeighting
from medmtl.mtl.weightings.cagrad import CagradWeighting
from medmtl.mtl.weightings.dwa import DwaWeighting
from medmtl.mtl.weightings.equal import EqualWeighting
from medmtl.mtl.weightings.fixed import FixedWeighting
from medmtl.mtl.weightings.main_aux import MainAuxWeighting
from medmtl.mtl.weightings.mean import MeanWeighting
from medmtl.mtl.weightings.mgda import MgdaWeighting
from medmtl.mtl.weightings.nashmtl import NashMtlWeighting
from medmtl.mtl.weightings.pcgrad import PcgradWeighting
from medmtl.mtl.weightings.rlw import RlwWeighting
from medmtl.mtl.weightings.spearman import SpearmanWeighting
from medmtl.mtl.weightings.uncertainty import UncertaintyWeighting
from medmtl.mtl.weightings.upgrad import UpgradWeighting

__all__ = [
    "WEIGHTINGS",
    "WeightingInfo",
    "check_weighting_kwargs",
    "CagradWeighting",
    "DwaWeighting",
    "EqualWeighting",
    "FixedWeighting",
    "JacobianWeighting",
    "MainAuxWeighting",
    "MeanWeighting",
    "MgdaWeighting",
    "NashMtlWeighting",
    "PcgradWeighting",
    "RlwWeighting",
    "SpearmanWeighting",
    "UncertaintyWeighting",
    "UpgradWeighting",
    "Weighting",
    "create_weighting",
]
