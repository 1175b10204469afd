"""Experiment configuration: one pydantic schema for everything, its loader and dotted overrides.

The schema checks structure, types and ranges; the names of registered components (strategies,
heads, weightings, ...) are checked against their registries by :func:`medmtl.protocols.check_config`,
which every entry point (``medmtl.api``, the CLI, ``run_experiment``) runs before any training.
"""
from medmtl.config.loader import load_config, parse_config, save_config
from medmtl.config.overrides import apply_dotted, override_config, set_dotted
from medmtl.config.schema import ExperimentConfig, TaskConfig

__all__ = ["ExperimentConfig", "TaskConfig", "apply_dotted", "load_config", "override_config", "parse_config",
           "save_config", "set_dotted"]
