"""Decode once: every image is decoded, converted and resized a single time into memory-mapped
uint8 slots, keyed by the source's content and the preprocessing settings.

Layout under ``cache_dir``::

    files.json                  path -> [size, mtime_ns, sha1]: skips re-hashing unchanged files
    signatures-t{T}/            settings-independent facts per content key: pixel hash,
                                perceptual hash and a T x T grey thumbnail (duplicate search)
    {MODE}{SIZE}/images.u8      append-only slots of SIZE x SIZE x C bytes
    {MODE}{SIZE}/masks.u8       append-only slots of SIZE x SIZE bytes (binary masks)
    {MODE}{SIZE}/index.json     content key -> slot

Appends happen under an exclusive file lock, and an index is replaced atomically only after
its slots are flushed, so a killed run leaves at worst unused bytes that the next run truncates.
No library does content-addressed, append-only image slots with memmap reads; this is ~200 lines.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from medmtl.data.records import FileSource, ImageSource, Record, Skipped, file_digest
from medmtl.errors import DataError


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except json.JSONDecodeError:  # a torn write from another tool: rebuild rather than fail
        return default


@contextmanager
def _locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _SlotStore:
    """Fixed-size uint8 slots in one append-only file, read through np.memmap."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = path, shape
        self.slot_bytes = int(np.prod(shape))

    def append(self, start: int, arrays: list[np.ndarray]) -> None:
        with open(self.path, "ab") as fh:
            fh.truncate(start * self.slot_bytes)  # drop bytes a killed run wrote past the index
            fh.seek(start * self.slot_bytes)
            for arr in arrays:
                fh.write(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
            fh.flush()
            os.fsync(fh.fileno())

    def open(self, n: int) -> np.ndarray:
        if n == 0:
            return np.zeros((0, *self.shape), np.uint8)
        return np.memmap(self.path, dtype=np.uint8, mode="r", shape=(n, *self.shape))


def to_mode(arr: np.ndarray, mode: str) -> np.ndarray:
    """Grey (H, W) or RGB (H, W, 3) uint8, whatever the input's channels."""
    if mode == "L":
        if arr.ndim == 3:
            arr = (arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round()
            return np.clip(arr, 0, 255).astype(np.uint8)
        return arr
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3]


def resize(arr: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    img = Image.fromarray(arr)
    if img.size == (size, size):
        return arr
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(img.resize((size, size), resample, reducing_gap=None if nearest else 3.0))


def thumbnail(arr: np.ndarray, size: int) -> np.ndarray:
    """Grey, centre-cropped square, ``size`` px: robust to resolution and centre cropping."""
    grey = to_mode(arr, "L")
    h, w = grey.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(np.ascontiguousarray(grey[top:top + s, left:left + s]))
    return np.asarray(img.resize((size, size), Image.Resampling.BOX))


def perceptual_hash(arr: np.ndarray) -> int:
    return int(str(imagehash.phash(Image.fromarray(to_mode(arr, "L")))), 16)


@dataclass
class CachedImages:
    """What the cache hands to the pipeline for one list of records (aligned with it)."""

    records: list[Record]
    store: np.ndarray                  # memory-mapped (slots, S, S, C) uint8; no copy in RAM
    slots: np.ndarray                  # (N,) int: records[i]'s image is store[slots[i]]
    mask_store: np.ndarray | None      # memory-mapped (slots, S, S) uint8 {0, 1}
    mask_slots: np.ndarray             # (N,) int, -1 where the record has no mask
    pixel_hash: np.ndarray             # (N,) str
    phash: np.ndarray                  # (N,) uint64
    thumbs: np.ndarray                 # (N, T, T) uint8
    native_size: np.ndarray            # (N, 2) int: width, height before resizing
    skipped: list[Skipped] = field(default_factory=list)
    decoded: int = 0                   # images decoded in this call (0 on a warm cache)
    keys: np.ndarray | None = None     # (N,) str content keys (sha1 of the source's content)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def has_mask(self) -> np.ndarray:
        return self.mask_slots >= 0

    def image(self, i: int) -> np.ndarray:
        """(S, S, C) uint8 pixels of record ``i``, read from the memory map."""
        return self.store[self.slots[i]]

    def mask(self, i: int) -> np.ndarray | None:
        return None if self.mask_slots[i] < 0 else self.mask_store[self.mask_slots[i]]

    def images(self, rows=None) -> np.ndarray:
        """A copy of the images of ``rows`` (all by default) as one (n, S, S, C) array."""
        rows = np.arange(len(self.slots)) if rows is None else np.asarray(rows)
        return np.asarray(self.store[self.slots[rows]])


class DecodeCache:
    """Content-addressed cache of resized images for one setting of (mode, size)."""

    def __init__(self, root: str | Path, size: int, mode: str = "RGB", thumb: int = 32):
        self.root, self.size, self.mode, self.thumb = Path(root), int(size), mode, int(thumb)
        self.dir = self.root / f"{mode}{size}"
        self.sig_dir = self.root / f"signatures-t{thumb}"
        channels = 1 if mode == "L" else 3
        self._images = _SlotStore(self.dir / "images.u8", (size, size, channels))
        self._masks = _SlotStore(self.dir / "masks.u8", (size, size))
        self._thumbs = _SlotStore(self.sig_dir / "thumbs.u8", (thumb, thumb))

    # -- content keys -------------------------------------------------------------------------
    def content_keys(self, sources: list[ImageSource]) -> list[str]:
        """sha1 of each source's content; unchanged files (same size and mtime) are not re-read."""
        stat_path = self.root / "files.json"
        known = _read_json(stat_path, {})
        keys, changed = [], False
        for src in sources:
            if isinstance(src, FileSource):
                path = os.path.abspath(src.path)  # not resolve(): a realpath per file costs more than the hash lookup
                st = os.stat(path)
                entry = known.get(path)
                if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
                    keys.append(src.content_key(entry[2]))
                    continue
                key = file_digest(src.path)
                known[path] = [st.st_size, st.st_mtime_ns, key]
                changed = True
                keys.append(src.content_key(key))  # a crop keys apart from its whole file
            else:
                keys.append(src.fingerprint())
        if changed:
            self.root.mkdir(parents=True, exist_ok=True)
            with _locked(self.root):
                merged = _read_json(stat_path, {})
                merged.update(known)
                _atomic_json(stat_path, merged)
        return keys

    # -- decoding -----------------------------------------------------------------------------
    def _decode_one(self, rec: Record, need_image: bool, need_sig: bool, need_mask: bool):
        try:
            native = rec.source.load()
        except DataError:
            raise
        except Exception as exc:  # corrupt/unreadable files are skipped and listed, never fatal
            return Skipped(rec.source.describe(), f"unreadable image: {type(exc).__name__}: {exc}")
        arr = to_mode(native, self.mode)
        out = {"native_size": (arr.shape[1], arr.shape[0])}
        if need_image:
            out["image"] = resize(arr, self.size).reshape(self.size, self.size, -1)
        if need_sig:
            out["pixel_hash"] = hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()
            out["phash"] = perceptual_hash(native)
            out["thumb"] = thumbnail(native, self.thumb)
        if need_mask:
            merged = None
            for msrc in rec.masks:
                try:
                    m = to_mode(msrc.load(), "L")
                except Exception as exc:
                    return Skipped(msrc.describe(), f"unreadable mask (image {rec.source.describe()} left out): "
                                                    f"{type(exc).__name__}: {exc}")
                if m.shape != arr.shape[:2]:
                    raise DataError(f"mask {msrc.describe()} is {m.shape[1]}x{m.shape[0]} but its image "
                                    f"{rec.source.describe()} is {arr.shape[1]}x{arr.shape[0]} (width x height)")
                merged = m > 0 if merged is None else merged | (m > 0)
            out["mask"] = resize(merged.astype(np.uint8), self.size, nearest=True)
        return out

    def load(self, records: list[Record], workers: int | None = None, progress: bool = True,
             desc: str = "decode") -> CachedImages:
        """Return cached arrays for ``records``, decoding (in parallel) only what is missing.

        Records whose image or mask cannot be read are dropped from the result and listed in
        ``skipped``; a mask whose size differs from its image raises :class:`DataError`.
        """
        keys = self.content_keys([r.source for r in records])
        mask_keys = self._mask_keys(records)
        with _locked(self.root):
            index = _read_json(self.dir / "index.json", {"n": 0, "slots": {}, "n_masks": 0, "masks": {}})
            sigs = _read_json(self.sig_dir / "index.json", {"n": 0, "rows": {}})
            todo = [i for i, (k, mk) in enumerate(zip(keys, mask_keys))
                    if k not in index["slots"] or k not in sigs["rows"] or (mk and mk not in index["masks"])]
            skipped, results = self._decode_many(records, keys, mask_keys, todo, index, sigs, workers, progress, desc)
            self._commit(keys, mask_keys, results, index, sigs)
        return self._assemble(records, keys, mask_keys, skipped, index, sigs, len(results))

    def _mask_keys(self, records: list[Record]) -> list[str | None]:
        """One key per record for its merged mask files (None without masks), hashed in one pass."""
        flat = [m for r in records for m in r.masks]
        parts = iter(self.content_keys(flat))
        out = []
        for rec in records:
            keys = [next(parts) for _ in rec.masks]
            out.append(hashlib.sha1("+".join(keys).encode()).hexdigest() if keys else None)
        return out

    def _decode_many(self, records, keys, mask_keys, todo, index, sigs, workers, progress, desc):
        def job(i):
            k = keys[i]
            return i, self._decode_one(records[i], k not in index["slots"], k not in sigs["rows"],
                                       bool(mask_keys[i]) and mask_keys[i] not in index["masks"])

        workers = workers or min(8, os.cpu_count() or 1)
        skipped, results = [], {}
        if not todo:
            return skipped, results
        with ThreadPoolExecutor(max_workers=workers) as pool:
            bar = tqdm(pool.map(job, todo), total=len(todo), desc=desc, disable=not progress,
                       unit="img", mininterval=0.5)
            for i, out in bar:
                if isinstance(out, Skipped):
                    skipped.append(out)
                else:
                    results[i] = out
        return skipped, results

    def _commit(self, keys, mask_keys, results, index, sigs) -> None:
        new_img, new_mask, new_sig = {}, {}, {}
        for i, out in sorted(results.items()):
            if "image" in out and keys[i] not in index["slots"] and keys[i] not in new_img:
                new_img[keys[i]] = out["image"]
            if "mask" in out and mask_keys[i] not in index["masks"] and mask_keys[i] not in new_mask:
                new_mask[mask_keys[i]] = out["mask"]
            if "thumb" in out and keys[i] not in sigs["rows"] and keys[i] not in new_sig:
                new_sig[keys[i]] = out
        if new_img:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._images.append(index["n"], list(new_img.values()))
            for j, k in enumerate(new_img):
                index["slots"][k] = [index["n"] + j, *results[keys.index(k)]["native_size"]]
            index["n"] += len(new_img)
        if new_mask:
            self._masks.append(index["n_masks"], list(new_mask.values()))
            for j, k in enumerate(new_mask):
                index["masks"][k] = index["n_masks"] + j
            index["n_masks"] += len(new_mask)
        if new_img or new_mask:
            _atomic_json(self.dir / "index.json", index)
        if new_sig:
            self.sig_dir.mkdir(parents=True, exist_ok=True)
            self._thumbs.append(sigs["n"], [o["thumb"] for o in new_sig.values()])
            for j, (k, o) in enumerate(new_sig.items()):
                sigs["rows"][k] = [sigs["n"] + j, o["pixel_hash"], str(o["phash"])]
            sigs["n"] += len(new_sig)
            _atomic_json(self.sig_dir / "index.json", sigs)

    def _assemble(self, records, keys, mask_keys, skipped, index, sigs, decoded) -> CachedImages:
        bad = {s.path for s in skipped}
        keep = [i for i, r in enumerate(records)
                if keys[i] in index["slots"] and keys[i] in sigs["rows"]
                and (not mask_keys[i] or mask_keys[i] in index["masks"])
                and r.source.describe() not in bad]
        slots = np.array([index["slots"][keys[i]][0] for i in keep], dtype=np.int64)
        native = np.array([index["slots"][keys[i]][1:] for i in keep], dtype=np.int64).reshape(-1, 2)
        mask_slots = np.array([index["masks"][mask_keys[i]] if mask_keys[i] else -1 for i in keep], dtype=np.int64)
        rows = [sigs["rows"][keys[i]] for i in keep]
        thumbs = self._thumbs.open(sigs["n"])
        return CachedImages(
            records=[records[i] for i in keep],
            store=self._images.open(index["n"]), slots=slots,
            mask_store=self._masks.open(index["n_masks"]) if (mask_slots >= 0).any() else None,
            mask_slots=mask_slots,
            pixel_hash=np.array([r[1] for r in rows], dtype=object),
            phash=np.array([int(r[2]) for r in rows], dtype=np.uint64),
            thumbs=np.asarray(thumbs[np.array([r[0] for r in rows], dtype=np.int64)]) if rows
            else np.zeros((0, self.thumb, self.thumb), np.uint8),
            native_size=native, skipped=skipped, decoded=decoded,
            keys=np.array([keys[i] for i in keep], dtype=object),
        )
