"""The record table every reader returns: one row per image, labels per target.

A record says where its pixels are (an :class:`ImageSource`), which official split and which
group (patient, case, film pair) it belongs to, and the raw label of each target the reader
knows. A target with no label for this image is simply absent: it is masked later, never imputed.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    from PIL import Image

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
    """An image file readable by Pillow (PNG, JPEG, PGM, BMP, TIFF ...)."""

    path: Path

    def fingerprint(self) -> str:
        return file_digest(self.path)

    def load(self) -> np.ndarray:
        from PIL import Image

        with Image.open(self.path) as img:
            img.load()
            return pil_to_uint8(img)

    def describe(self) -> str:
        return str(self.path)


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
    """What a reader knows about one of its targets (defaults for the task declaring it)."""

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
