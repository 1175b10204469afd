"""A generic CSV manifest: one row per image, any number of label columns.

Image paths may be relative (to ``root``, by default the CSV's folder) and use ``/`` or ``\\``
(Windows-made manifests such as the LIDC patch table). ``strip_components`` drops leading folders
that no longer exist, like ``tar --strip-components``. An empty cell is a missing label.
"""
from __future__ import annotations

from pathlib import Path, PureWindowsPath
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import model_validator

from medmtl.data.readers._base import READERS, AnyPath, FilePath, Reader
from medmtl.data.records import FileSource, ReadResult, Record, TargetInfo
from medmtl.errors import DataError

MAX_LISTED = 10


def _norm_relpath(text: str, strip: int) -> Path:
    parts = [p for p in PureWindowsPath(text.strip()).parts if p not in (".", "")]
    if PureWindowsPath(text).is_absolute() or text.startswith("/"):
        return Path(text.replace("\\", "/"))
    return Path(*parts[strip:]) if len(parts) > strip else Path(*parts)


@READERS.register("manifest", targets=("<label column>", "mask", "box"))
class ManifestReader(Reader):
    """Images listed in a CSV file.

    Args:
        path: the CSV file.
        image_column: column holding the image path.
        label_columns: columns that become targets (a task picks one with ``target``).
        id_column: unique id column; default: the image path.
        group_column: patient/case column; rows of one group always share a split.
        split_column: official split column (train/val/valid/test).
        mask_column: column holding a mask path.
        box_columns: four columns x0, y0, x1, y1 (pixels of the stored image).
        root: folder that relative paths start from; default: the CSV's folder.
        strip_components: leading path components dropped from every path.
        multilabel_separator: separator of several labels in one cell, for multilabel tasks.
    """

    name: Literal["manifest"] = "manifest"
    path: FilePath
    image_column: str = "image"
    label_columns: list[str] = []
    id_column: str | None = None
    group_column: str | None = None
    split_column: str | None = None
    mask_column: str | None = None
    box_columns: tuple[str, str, str, str] | None = None
    root: AnyPath | None = None
    strip_components: int = 0
    multilabel_separator: str = ";"

    @model_validator(mode="after")
    def _check(self):
        if self.strip_components < 0:
            raise ValueError("strip_components must be >= 0")
        return self

    def _columns(self) -> list[str]:
        cols = [self.image_column, *self.label_columns]
        cols += [c for c in (self.id_column, self.group_column, self.split_column, self.mask_column) if c]
        return cols + list(self.box_columns or ())

    def read(self) -> ReadResult:
        table = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        missing_cols = [c for c in self._columns() if c not in table.columns]
        if missing_cols:
            raise DataError(f"{self.path}: columns {missing_cols} not found; the file has {list(table.columns)}")
        base = self.root or self.path.parent
        records, missing, seen = [], [], {}
        for i, row in enumerate(table.to_dict("records")):
            line = i + 2  # 1-based, after the header line
            image = base / _norm_relpath(row[self.image_column], self.strip_components)
            mask = None
            if self.mask_column and row[self.mask_column].strip():
                mask = base / _norm_relpath(row[self.mask_column], self.strip_components)
            for p in (image, mask):
                if p is not None and not p.is_file():
                    missing.append(f"row {line}: {p}")
            rid = row[self.id_column] if self.id_column else _norm_relpath(row[self.image_column], self.strip_components).as_posix()
            if rid in seen:
                raise DataError(f"{self.path}: row {line} repeats id {rid!r} of row {seen[rid]}")
            seen[rid] = line
            records.append(self._record(row, rid, image, mask, line))
        if missing:
            head = "\n  ".join(missing[:MAX_LISTED])
            raise DataError(f"{self.path}: {len(missing)} referenced files are missing; the first "
                            f"{min(len(missing), MAX_LISTED)}:\n  {head}")
        targets = {c: TargetInfo("multiclass", tuple(sorted({r.labels[c] for r in records if c in r.labels})))
                   for c in self.label_columns}
        if self.mask_column:
            targets["mask"] = TargetInfo("segmentation")
        if self.box_columns:
            targets["box"] = TargetInfo("detection")
        return ReadResult(records, targets)

    def _record(self, row, rid, image, mask, line) -> Record:
        labels = {c: row[c].strip() for c in self.label_columns if row[c].strip() != ""}
        boxes = None
        if self.box_columns:
            cells = [row[c].strip() for c in self.box_columns]
            if any(cells) and not all(cells):   # a half-written box is an error, never a silent "no box"
                raise DataError(f"{self.path}: row {line}: box columns {list(self.box_columns)} are partly empty "
                                f"({cells}); give all four (x0, y0, x1, y1) or none (no lesion box)")
            if all(cells):
                try:
                    boxes = np.array([[float(v) for v in cells]], dtype=np.float32)
                except ValueError:
                    raise DataError(f"{self.path}: row {line}: box columns {list(self.box_columns)} "
                                    f"must be numbers, found {cells}") from None
                labels["box"] = True
        if mask is not None:
            labels["mask"] = True
        return Record(id=rid, source=FileSource(image),
                      split=row[self.split_column] if self.split_column else None,
                      group=row[self.group_column] if self.group_column else None,
                      labels=labels, masks=(FileSource(mask),) if mask else (), boxes=boxes)
