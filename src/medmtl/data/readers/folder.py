"""Class folders (``root/CLASS/img``), optionally below split folders (``root/SPLIT/CLASS/img``).

Used for brain_tumor_mri, skin_cancer_isic and PCam. Ids are ``split/class/file`` because file
names repeat across folders in the wild (the ISIC copy has ``train/benign/1.jpg`` and
``test/benign/1.jpg``).
"""
from __future__ import annotations

import os
from typing import Literal

from medmtl.data.readers._base import IMAGE_EXTENSIONS, READERS, DirPath, Reader
from medmtl.data.records import SPLIT_ALIASES, FileSource, ReadResult, Record, Skipped, TargetInfo
from medmtl.errors import DataError


@READERS.register("folder", targets=("class",))
class FolderReader(Reader):
    """Images filed in one folder per class.

    Args:
        root: the dataset folder.
        splits: ``"auto"`` treats the top level as split folders when every top-level folder is a
            split name (train/val/valid/test ...); ``"none"`` reads ``root/CLASS`` only.
        extensions: file endings read as images (case-insensitive); other files are skipped and listed.
    """

    name: Literal["folder"] = "folder"
    root: DirPath
    splits: Literal["auto", "none"] = "auto"
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS

    def _split_dirs(self):
        top = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if self.splits == "auto" and top and all(p.name.lower() in SPLIT_ALIASES for p in top):
            return [(p.name, p) for p in top]
        return [(None, self.root)]

    def read(self) -> ReadResult:
        records, skipped, classes = [], [], set()
        exts = tuple(e.lower() for e in self.extensions)
        for split, split_dir in self._split_dirs():
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                classes.add(class_dir.name)
                prefix = class_dir.relative_to(self.root).as_posix()
                # os.scandir and string sorting: Path objects per entry cost ~1 s on PCam's 16000 files
                entries = sorted((e.name, e.is_dir()) for e in os.scandir(class_dir))
                for fname, is_dir in entries:
                    if fname.startswith("."):
                        continue
                    path = class_dir / fname
                    if is_dir:   # a sub-folder is not a class here: said, not silently passed over
                        n = sum(1 for _ in path.rglob("*") if _.is_file())
                        skipped.append(Skipped(str(path), f"a folder inside class folder {class_dir.name!r} "
                                                          f"({n} files not read; images go directly in ROOT/CLASS)"))
                        continue
                    if not fname.lower().endswith(exts):
                        skipped.append(Skipped(str(path), f"not an image file (extension {path.suffix!r})"))
                        continue
                    records.append(Record(id=f"{prefix}/{fname}", source=FileSource(path), split=split,
                                          labels={"class": class_dir.name}))
        if not records:
            raise DataError(f"no images found under {self.root} (expected ROOT/CLASS/IMAGE or ROOT/SPLIT/CLASS/IMAGE)")
        return ReadResult(records, {"class": TargetInfo("multiclass", tuple(sorted(classes)))}, skipped)
