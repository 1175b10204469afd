"""Protocols: how an experiment's models are trained, selected and tested.

Strategies (``STRATEGIES``: ``stl``, ``mtl``, ``sequential``, ``finetune``, ...) turn one arm into a
model; protocols (``PROTOCOLS``: ``holdout``, ``cv``, ``loto``) run the arms on a split design and
write ``results/``; each is handed an :class:`~medmtl.execution.Executor` to train on. Importing
this package registers them all.
"""
from medmtl.protocols import cv, loto  # noqa: F401  (registers the cv and loto protocols)
from medmtl.protocols._base import PROTOCOLS, ProtocolInfo, ProtocolRun, create_protocol
from medmtl.protocols.check import check_config
from medmtl.protocols.run import apply_profile, apply_quick, run_experiment
from medmtl.protocols.strategies import STRATEGIES, ArmContext, ArmOutcome, StrategyInfo, create_strategy

__all__ = ["PROTOCOLS", "STRATEGIES", "ArmContext", "ArmOutcome", "ProtocolInfo", "ProtocolRun", "StrategyInfo",
           "apply_profile", "apply_quick", "check_config", "create_protocol", "create_strategy", "run_experiment"]
