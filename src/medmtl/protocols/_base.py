"""The protocol registry: how an experiment's models are trained and tested (holdout, CV, LOTO)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from medmtl._registry import Registry


@dataclass(frozen=True)
class ProtocolInfo:
    """``section``: the config section that selects the protocol (for messages and the README)."""

    section: str


@dataclass
class ProtocolRun:
    """What a protocol hands back: its prediction rows, the prepared data they refer to (the last
    fold's under CV) and the data summary for the report (per fold under CV)."""

    pred: pd.DataFrame
    data: object
    summary: dict = field(default_factory=dict)
    audit: dict = field(default_factory=dict)     # decisions and test scorings (medmtl.evaluation.audit)


# A protocol is ``fn(cfg, run_dir, executor, progress) -> ProtocolRun``; it trains through the
# executor it is handed, so the same protocol runs sequentially or on a Ray cluster.
PROTOCOLS: Registry = Registry("protocol", ProtocolInfo)


def create_protocol(name: str):
    return PROTOCOLS.get(name, "protocol")
