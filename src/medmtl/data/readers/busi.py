"""BUSI breast ultrasound (Al-Dhabyani et al., Data in Brief 2020): class, mask and lesion boxes.

Layout: ``root/{benign,malignant,normal}/NAME.png`` with ``NAME_mask.png`` and, for 17 images,
``NAME_mask_1.png`` / ``NAME_mask_2.png`` (further lesions) that are merged with the first mask.
One box per mask file (each file outlines one lesion); normal images have an empty mask and no box.
"""
from __future__ import annotations

import re
from typing import Literal

import numpy as np

from medmtl.data.readers._base import READERS, DirPath, Reader
from medmtl.data.records import FileSource, ReadResult, Record, Skipped, TargetInfo
from medmtl.errors import DataError

_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$")
CLASSES = ("benign", "malignant", "normal")


def mask_box(path) -> np.ndarray | None:
    """Tight x0, y0, x1, y1 box (pixel edges) around a mask's foreground, or None when empty."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("L")) > 0
    ys, xs = np.nonzero(arr)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def _image_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:  # header only: no pixel decode
        return img.size


@READERS.register("busi", targets=("class", "mask", "box"))
class BUSIReader(Reader):
    """BUSI: targets ``class`` (benign/malignant/normal), ``mask`` and ``box``.

    Args:
        root: the BUSI folder holding the class folders.
        boxes: compute one box per mask file (reads every mask once, about a second for BUSI).
    """

    name: Literal["busi"] = "busi"
    root: DirPath
    boxes: bool = True

    def read(self) -> ReadResult:
        records, skipped = [], []
        for cls in CLASSES:
            folder = self.root / cls
            if not folder.is_dir():
                raise DataError(f"{self.root}: expected class folder {cls!r} (BUSI has {list(CLASSES)})")
            images, masks = {}, {}
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() != ".png":
                    skipped.append(Skipped(str(path), "not a PNG file"))
                    continue
                m = _MASK.match(path.stem)
                if m:
                    masks.setdefault(m["stem"], []).append((int(m["k"] or 0), path))
                else:
                    images[path.stem] = path
            for stem in sorted(set(masks) - set(images)):
                skipped.extend(Skipped(str(p), "mask without an image") for _, p in masks[stem])
            for stem, path in sorted(images.items()):
                mask_paths = [p for _, p in sorted(masks.get(stem, []))]
                out = self._record(cls, stem, path, mask_paths)
                (skipped if isinstance(out, Skipped) else records).append(out)
        return ReadResult(
            records,
            {"class": TargetInfo("multiclass", CLASSES), "mask": TargetInfo("segmentation"),
             "box": TargetInfo("detection")},
            skipped,
        )

    def _record(self, cls, stem, path, mask_paths) -> Record | Skipped:
        """The image's record, or a :class:`Skipped` when it or one of its masks cannot be read."""
        labels = {"class": cls}
        boxes = None
        if mask_paths:
            try:
                size = _image_size(path)
            except Exception as exc:  # corrupt/unreadable files are skipped and listed, never fatal
                return Skipped(str(path), f"unreadable image: {type(exc).__name__}: {exc}")
            found = []
            for mp in mask_paths:
                try:
                    mask_size = _image_size(mp)
                    box = mask_box(mp) if self.boxes and mask_size == size else None
                except Exception as exc:
                    return Skipped(str(mp), f"unreadable mask (image {path} left out): {type(exc).__name__}: {exc}")
                if mask_size != size:
                    raise DataError(f"mask {mp} is {mask_size} but its image {path} is {size} (width, height)")
                if box is not None:
                    found.append(box)
            labels["mask"] = True
            if self.boxes:
                boxes = np.stack(found) if found else np.zeros((0, 4), np.float32)
                labels["box"] = True
        return Record(id=f"{cls}/{stem}", source=FileSource(path), labels=labels,
                      masks=tuple(FileSource(p) for p in mask_paths), boxes=boxes)
