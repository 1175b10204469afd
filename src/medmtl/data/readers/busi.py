"""BUSI breast ultrasound (Al-Dhabyani et al., Data in Brief 2020): class, mask and lesion boxes.

Layout: ``root/{benign,malignant,normal}/NAME.png`` with ``NAME_mask.png`` and, for 17 images,
``NAME_mask_1.png`` / ``NAME_mask_2.png`` (further lesions) that are merged with the first mask.
One box per mask file (each file outlines one lesion); normal images have an empty mask and no box.

Lesion characteristics (continuous targets, computed once at read time from the merged mask, on
its largest connected component, the index lesion; empty masks give no value, so the label is
missing). The mask is in the stored image's pixel frame and BUSI has no pixel spacing, so every
characteristic is scale-free:

* ``lesion_size``: the lesion's area as a fraction of the image's area (0-1).
* ``circularity``: ``4 pi area / perimeter^2`` (scikit-image ``regionprops``; 1 for a disc, lower
  for lobulated or spiculated margins). Not clipped: a small, blocky region can exceed 1 slightly.
* ``taller_than_wide``: height / width of the lesion's bounding box; above 1 the lesion is
  "taller than wide", a BI-RADS sign of malignancy (the ratio itself is the target, so a config can
  binarise it at any threshold, e.g. its training median).
"""
from __future__ import annotations

import re
from typing import Literal

import numpy as np
from PIL import Image

from medmtl.data.readers._base import READERS, DirPath, Reader
from medmtl.data.records import FileSource, ReadResult, Record, Skipped, TargetInfo
from medmtl.errors import DataError

_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?$")
CLASSES = ("benign", "malignant", "normal")
CHARACTERISTICS = ("lesion_size", "circularity", "taller_than_wide")


def _read_mask(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 0


def _box_of(mask: np.ndarray) -> np.ndarray | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def lesion_characteristics(mask: np.ndarray) -> dict[str, float] | None:
    """``lesion_size``, ``circularity`` and ``taller_than_wide`` of a binary mask's largest
    connected component (8-connectivity), or None when the mask is empty. See the module docstring."""
    from skimage.measure import label, regionprops  # lazy: optional (test extra); only multi-lesion masks need it

    regions = regionprops(label(mask, connectivity=2))
    if not regions:
        return None
    lesion = max(regions, key=lambda r: r.area)
    y0, x0, y1, x1 = lesion.bbox
    perimeter = lesion.perimeter
    return {
        "lesion_size": float(lesion.area) / mask.size,
        # a one-pixel-wide region has perimeter 0 in regionprops: call it a line, circularity 0
        "circularity": float(4 * np.pi * lesion.area / perimeter ** 2) if perimeter > 0 else 0.0,
        "taller_than_wide": float(y1 - y0) / float(x1 - x0),
    }


def mask_box(path) -> np.ndarray | None:
    """Tight x0, y0, x1, y1 box (pixel edges) around a mask's foreground, or None when empty."""
    return _box_of(_read_mask(path))


def _image_size(path) -> tuple[int, int]:
    with Image.open(path) as img:  # header only: no pixel decode
        return img.size


@READERS.register("busi", targets=("class", "mask", "box", *CHARACTERISTICS))
class BUSIReader(Reader):
    """BUSI: targets ``class`` (benign/malignant/normal), ``mask``, ``box`` and the continuous
    lesion characteristics ``lesion_size``, ``circularity`` and ``taller_than_wide``.

    Args:
        root: the BUSI folder holding the class folders.
        boxes: compute one box per mask file (reads every mask once, about a second for BUSI).
        characteristics: compute the lesion characteristics from the merged mask (the same single
            read of each mask; regionprops adds about a second for BUSI).
    """

    name: Literal["busi"] = "busi"
    root: DirPath
    boxes: bool = True
    characteristics: bool = True

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
                if not mask_paths:   # kept for its class; listed, since mask and box tasks lose it
                    skipped.append(Skipped(str(path), "no mask file: kept for its class, unlabelled for mask, box "
                                                      "and lesion characteristics"))
        return ReadResult(
            records,
            {"class": TargetInfo("multiclass", CLASSES), "mask": TargetInfo("segmentation"),
             "box": TargetInfo("detection"), **{c: TargetInfo("continuous") for c in CHARACTERISTICS}},
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
            found, merged = [], None
            need_pixels = self.boxes or self.characteristics
            for mp in mask_paths:
                try:
                    mask_size = _image_size(mp)
                    arr = _read_mask(mp) if need_pixels and mask_size == size else None
                except Exception as exc:
                    return Skipped(str(mp), f"unreadable mask (image {path} left out): {type(exc).__name__}: {exc}")
                if mask_size != size:
                    raise DataError(f"mask {mp} is {mask_size} but its image {path} is {size} (width, height)")
                if arr is not None:
                    merged = arr if merged is None else merged | arr
                    box = _box_of(arr) if self.boxes else None
                    if box is not None:
                        found.append(box)
            labels["mask"] = True
            if self.characteristics and merged is not None:
                labels.update(lesion_characteristics(merged) or {})   # empty (normal) mask: no value
            if self.boxes:
                boxes = np.stack(found) if found else np.zeros((0, 4), np.float32)
                labels["box"] = True
        return Record(id=f"{cls}/{stem}", source=FileSource(path), labels=labels,
                      masks=tuple(FileSource(p) for p in mask_paths), boxes=boxes)
