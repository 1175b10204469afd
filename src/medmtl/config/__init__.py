"""Experiment configuration: one pydantic schema for everything."""
from medmtl.config.loader import load_config, parse_config
from medmtl.config.schema import ExperimentConfig, TaskConfig

__all__ = ["ExperimentConfig", "TaskConfig", "load_config", "parse_config"]
