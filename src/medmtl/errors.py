"""Errors a user can act on. Each names the file, row or config key at fault."""
from __future__ import annotations


class MedmtlError(Exception):
    """Base class; the CLI prints these without a stack trace."""


class ConfigError(MedmtlError, ValueError):
    """An experiment configuration is invalid; the message names the key path."""


class DataError(MedmtlError, ValueError):
    """A dataset on disk contradicts its declaration; the message names the file and value."""


class LeakageError(DataError):
    """A validation/test image (or a copy of it) would enter training."""
