"""The record table every reader returns: one row per image, labels per target.

A record says where its pixels are (an :class:`ImageSource`), which official split and which
group (patient, case, film pair) it belongs to, and the raw label of each target the reader
knows. A target with no label for this image is simply absent: it is masked later, never imputed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}


def normalise_split(name: str | None) -> str | None:
    """Map the split spellings found in the wild (``valid``, ``validation``) to train/val/test."""
    if name is None:
        return None
    key = str(name).strip().lower()
    if key in ("", "nan", "none"):
        return None
    return SPLIT_ALIASES.get(key, key)


class ImageSource:
    """Where one image's pixels come from. Subclasses implement ``fingerprint`` and ``load``.

    ``fingerprint`` identifies the *content* (so a changed file gets a new key); ``load`` returns
    the native-resolution pixels as a uint8 array, (H, W) grey or (H, W, 3) colour.
    """

    def fingerprint(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def file_digest(path: Path, algorithm: str = "sha1") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pil_to_uint8(img) -> np.ndarray:
    """Convert any PIL mode to uint8 grey (H, W) or RGB (H, W, 3).

    16-bit and float images are rescaled by their own min/max, because their absolute range
    depends on the scanner and would otherwise saturate at 255.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return ((arr - lo) * scale).round().astype(np.uint8)
    if img.mode in ("L", "1"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if img.mode == "LA":
        return np.asarray(img.convert("L"), dtype=np.uint8)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")  # RGBA drops alpha, P and CMYK are expanded
    return np.asarray(img, dtype=np.uint8)


@dataclass(frozen=True)
class FileSource(ImageSource):
    """An image file readable by Pillow (PNG, JPEG, PGM, BMP, TIFF ...).

    ``crop`` (x0, y0, x1, y1, integer pixels of the stored image, x1/y1 exclusive) keeps only that
    region, zero-padded where it reaches past the image border so a region centred on a lesion
    near the edge stays centred on it. A crop is part of the content key: two crops of one file,
    or a crop and the whole file, never share a cache slot.
    """

    path: Path
    crop: tuple[int, int, int, int] | None = None

    def fingerprint(self) -> str:
        return self.content_key(file_digest(self.path))

    def content_key(self, file_key: str) -> str:
        """The key of this source's pixels given the sha1 of its file (the file's own without a crop)."""
        if self.crop is None:
            return file_key
        return hashlib.sha1(f"{file_key}|crop={','.join(map(str, self.crop))}".encode()).hexdigest()

    def load(self) -> np.ndarray:
        with Image.open(self.path) as img:
            img.load()
            arr = pil_to_uint8(img)
        return arr if self.crop is None else crop_padded(arr, self.crop)

    def describe(self) -> str:
        if self.crop is None:
            return str(self.path)
        x0, y0, x1, y1 = self.crop
        return f"{self.path}[x {x0}:{x1}, y {y0}:{y1}]"


def crop_padded(arr: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``arr[y0:y1, x0:x1]`` with zeros where the box lies outside the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty crop box {box} (x0, y0, x1, y1)")
    h, w = arr.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0, *arr.shape[2:]), dtype=arr.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


@dataclass(frozen=True)
class ArraySource(ImageSource):
    """One image inside an array container (a MedMNIST ``.npz``); ``array`` is read lazily."""

    path: Path
    key: str
    index: int

    def _array(self) -> np.ndarray:
        # The npz is opened once per process and per key, not once per image.
        return _npz_member(self.path, self.key)[self.index]

    def fingerprint(self) -> str:
        return hashlib.sha1(np.ascontiguousarray(self._array()).tobytes()).hexdigest()

    def load(self) -> np.ndarray:
        arr = np.asarray(self._array())
        if arr.dtype != np.uint8:
            raise ValueError(f"{self.describe()}: expected uint8 pixels, found {arr.dtype}")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return arr

    def describe(self) -> str:
        return f"{self.path}[{self.key}][{self.index}]"


_NPZ_CACHE: dict[tuple[str, str, float], np.ndarray] = {}


def _npz_member(path: Path, key: str) -> np.ndarray:
    stamp = (str(path), key, Path(path).stat().st_mtime_ns)
    if stamp not in _NPZ_CACHE:
        with np.load(path) as data:
            _NPZ_CACHE[stamp] = np.asarray(data[key])
    return _NPZ_CACHE[stamp]


@dataclass
class Record:
    """One image and everything known about it.

    Attributes:
        id: unique within its reader, stable across runs (used in split files and caches).
        source: where the pixels are.
        split: official split (train/val/test) or None when the dataset has none.
        group: patient/case/pair id; images of one group always land in the same split.
        labels: raw label per target; targets with no label are absent.
        masks: mask files merged (max) into one binary mask; empty when none.
        boxes: (K, 4) float array of x0, y0, x1, y1 in the stored image's pixel frame, or None.
    """

    id: str
    source: ImageSource
    split: str | None = None
    group: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    masks: tuple[ImageSource, ...] = ()
    boxes: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.group is None:
            self.group = self.id
        self.split = normalise_split(self.split)


@dataclass(frozen=True)
class Skipped:
    """A file left out, with the reason; every skip is counted and listed, never silent."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class TargetInfo:
    """What a reader knows about one of its targets (defaults for the task declaring it).

    ``kind`` is a task kind, or ``continuous`` for a numeric value with no classes (a task uses it
    through ``binarize``).
    """

    kind: str
    classes: tuple[str, ...] | None = None


@dataclass
class ReadResult:
    records: list[Record]
    targets: dict[str, TargetInfo]
    skipped: list[Skipped] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rec in self.records:
            if rec.id in seen:
                raise ValueError(f"reader produced duplicate record id {rec.id!r}")
            seen.add(rec.id)
