"""MedMNIST ``.npz`` files (Yang et al., Scientific Data 2023) with their official splits.

The official files store labels as (N, 1); re-saved copies in the wild store (N,). Both are read.
Set ``download: true`` with ``flag`` to fetch a missing file from the official Zenodo record
(md5-checked, resumable, atomic: see :mod:`medmtl.data.download`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import model_validator

from medmtl.data.download import download_medmnist
from medmtl.data.readers._base import READERS, AnyPath, Reader
from medmtl.data.records import ArraySource, ReadResult, Record, TargetInfo, _npz_member
from medmtl.errors import DataError

_SPLITS = ("train", "val", "test")


@READERS.register("medmnist", targets=("label",))
class MedMNISTReader(Reader):
    """One MedMNIST dataset.

    Args:
        path: the ``.npz`` file. When absent, ``root/{flag}.npz`` (or ``{flag}_{size}.npz``).
        flag: MedMNIST name (``breastmnist``, ``retinamnist`` ...), needed to download.
        root: folder holding or receiving the file.
        size: 28 (default) or 64/128/224 for MedMNIST+.
        download: fetch the official file when it is missing.
    """

    name: Literal["medmnist"] = "medmnist"
    path: AnyPath | None = None
    flag: str | None = None
    root: AnyPath | None = None
    size: int = 28
    download: bool = False

    @model_validator(mode="after")
    def _check_location(self):
        if self.path is None and (self.flag is None or self.root is None):
            raise ValueError("give either 'path' (the .npz file) or both 'flag' and 'root'")
        if self.path is not None and not self.path.is_file() and not self.download:
            raise ValueError(f"file does not exist: {self.path} (set download: true with flag to fetch it)")
        return self

    def resolve_path(self) -> Path:
        if self.path is not None:
            return self.path
        suffix = "" if self.size == 28 else f"_{self.size}"
        return Path(self.root) / f"{self.flag}{suffix}.npz"

    def read(self) -> ReadResult:
        path = self.resolve_path()
        if not path.is_file():
            if not self.download or self.flag is None:
                raise FileNotFoundError(f"{path} does not exist; set download: true and flag to fetch it")

            download_medmnist(self.flag, path.parent, size=self.size)
        try:
            with np.load(path) as data:
                keys = set(data.files)
        except Exception as exc:  # a truncated download or another file saved under the name
            raise DataError(f"{path}: not a readable .npz file: {type(exc).__name__}: {exc}") from None
        records = []
        n_classes = 0
        for split in _SPLITS:
            absent = [k for k in (f"{split}_images", f"{split}_labels") if k not in keys]
            if absent:
                raise DataError(f"{path}: missing key {' and '.join(absent)} (found {sorted(keys)})")
            labels = np.asarray(_npz_member(path, f"{split}_labels"))
            images = _npz_member(path, f"{split}_images")
            if len(labels) != len(images):
                raise DataError(f"{path}: {split}_images has {len(images)} rows but {split}_labels has {len(labels)}")
            if labels.ndim == 2 and labels.shape[1] > 1:
                raise DataError(f"{path}: {split}_labels has shape {labels.shape}; multi-label MedMNIST "
                                 "sets (ChestMNIST) are read with the manifest reader")
            labels = labels.reshape(len(labels))
            n_classes = max(n_classes, int(labels.max()) + 1 if len(labels) else 0)
            for i, lab in enumerate(labels):
                records.append(Record(id=f"{split}/{i}", source=ArraySource(path, f"{split}_images", i),
                                      split=split, labels={"label": int(lab)}))
        classes = tuple(str(i) for i in range(n_classes))
        return ReadResult(records, {"label": TargetInfo("multiclass", classes)})
