"""Shared pieces of every reader: the config base class and path field types.

A reader *is* its pydantic config: the fields are its parameters (validated once, with the key
path in every message) and ``read()`` turns them into a :class:`~medmtl.data.records.ReadResult`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from medmtl._registry import Registry
from medmtl.data.records import ReadResult


@dataclass(frozen=True)
class ReaderInfo:
    """``targets``: what a task's ``target`` may name (``()``: the columns the config declares)."""

    targets: tuple


READERS: Registry[type["Reader"]] = Registry("reader", ReaderInfo)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".gif", ".webp")


def default_data_root() -> Path:
    """``$MEDMTL_DATA``, or ``../shared/datasets`` relative to the working directory."""
    return Path(os.environ.get("MEDMTL_DATA", "../shared/datasets")).expanduser()


def expand_path(value):
    """Expand ``${MEDMTL_DATA}`` (with its default), other ``$VARS`` and ``~`` in a path value."""
    if isinstance(value, (str, Path)):
        text = str(value)
        if "MEDMTL_DATA" in text and "MEDMTL_DATA" not in os.environ:
            text = text.replace("${MEDMTL_DATA}", str(default_data_root())).replace(
                "$MEDMTL_DATA", str(default_data_root())
            )
        return Path(os.path.expanduser(os.path.expandvars(text)))
    return value


def _existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"directory does not exist: {path}")
    return path


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"file does not exist: {path}")
    return path


DirPath = Annotated[Path, BeforeValidator(expand_path), AfterValidator(_existing_dir)]
FilePath = Annotated[Path, BeforeValidator(expand_path), AfterValidator(_existing_file)]
AnyPath = Annotated[Path, BeforeValidator(expand_path)]


class Reader(BaseModel):
    """Base class of every registered reader; subclasses add ``name: Literal[...]`` and fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str

    def read(self) -> ReadResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def key(self) -> str:
        """A stable id of this reader's configuration: tasks with equal keys share one record table."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return f"{self.name}-{hashlib.sha1(payload.encode()).hexdigest()[:10]}"
