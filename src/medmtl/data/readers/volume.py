"""CT/MR volumes (NIfTI files or DICOM series folders) cut into 2D patches around lesions.

A CSV manifest lists one lesion (or one volume) per row::

    id,image,mask,x0,y0,z0,x1,y1,z1,group,split,malignant
    p1-l1,p1/ct.nii.gz,p1/lesion1.nii.gz,,,,,,,p1,train,1
    p1-l2,p1/ct.nii.gz,,40,52,10,61,70,14,p1,train,0
    p2,p2/dicom_series,,,,,,,,p2,test,

Only ``image`` is required. ``mask`` is a NIfTI lesion mask (non-zero = lesion), the box columns
are inclusive voxel indices of the canonical grid described below, ``id`` names the row (the image
path otherwise), ``group`` keeps a patient's patches in one split (the image path otherwise),
``split`` is the official split and every column in ``label_columns`` is a target (an empty cell
means no label). Relative paths are relative to the manifest's folder.

Every volume is brought to the same voxel grid: axes reordered and flipped to the closest RAS+
orientation (``nib.as_closest_canonical`` for NIfTI, the same rule applied to the DICOM geometry),
so axis 0 runs left to right, axis 1 posterior to anterior and axis 2 inferior to superior, then
resampled to ``spacing`` mm isotropic. Patch centres are drawn on that resampled grid from the
lesion mask, else the box, else the whole volume, and each patch becomes one record whose pixels
are cut only when the record is loaded.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import importlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, model_validator

from medmtl.data.readers._base import READERS, FilePath, Reader, expand_path
from medmtl.data.records import ImageSource, ReadResult, Record, Skipped, TargetInfo, file_digest
from medmtl.errors import DataError, MedmtlError

Plane = Literal["axial", "coronal", "sagittal"]
Window = tuple[float, float]

HU_WINDOWS: list[Window] = [(-800.0, -200.0), (-200.0, 400.0), (-1000.0, 400.0)]
PERCENTILE_WINDOWS: list[Window] = [(1.0, 99.0)] * 3
BOX_COLUMNS = ("x0", "y0", "z0", "x1", "y1", "z1")
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# The axis held fixed by each plane in the canonical (R, A, S) grid.
_FIXED_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
# LPS (DICOM patient frame) to RAS (NIfTI world frame).
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Percentiles of a big volume are estimated on at most this many voxels: the bounds barely move
# and the exact computation would cost seconds per volume.
_PERCENTILE_SAMPLES = 2_000_000


class VolumeError(DataError):
    """A volume file exists but cannot be turned into a consistent 3D array (a ``DataError``: the CLI
    prints it as one line naming the file)."""


def _require(module: str):
    """Import an optional dependency, saying which extra provides it when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"reading CT/MR volumes needs {module}: pip install 'medmtl[volumes]'") from exc


# --------------------------------------------------------------------------------------------
# Loading: NIfTI and DICOM series to a canonical float32 array plus spacing in mm
# --------------------------------------------------------------------------------------------


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def load_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a NIfTI file or a DICOM series folder as canonical float32 voxels and spacing in mm.

    Raises:
        VolumeError: the file or folder is not a readable 3D volume.
        ImportError: nibabel or pydicom is not installed.
    """
    path = Path(path)
    if path.is_dir():
        return _load_dicom_series(path)
    if is_nifti(path):
        return _load_nifti(path, as_mask=False)
    raise VolumeError(f"{path}: not a NIfTI file ({', '.join(NIFTI_SUFFIXES)}) or a DICOM series folder")


def load_mask(path: Path) -> np.ndarray:
    """Read a NIfTI lesion mask as a canonical boolean array (non-zero voxels are lesion)."""
    path = Path(path)
    if not is_nifti(path):
        raise VolumeError(f"{path}: masks must be NIfTI files ({', '.join(NIFTI_SUFFIXES)})")
    return _load_nifti(path, as_mask=True)[0]


def _load_nifti(path: Path, *, as_mask: bool):
    nib = _require("nibabel")
    img = nib.as_closest_canonical(nib.load(str(path)))
    if len(img.shape) == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if len(img.shape) != 3:
        raise VolumeError(f"{path}: expected a 3D volume, found shape {tuple(img.shape)}")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    if as_mask:
        # Label maps are integers: reading the raw values avoids a float copy of the whole mask.
        return np.asarray(img.dataobj) > 0, spacing
    # get_fdata applies scl_slope/scl_inter, which is how NIfTI stores HU for int16 CT.
    return np.ascontiguousarray(img.get_fdata(dtype=np.float32)), spacing


def series_files(folder: Path) -> list[Path]:
    """The files of a DICOM series folder; hidden files and DICOMDIR indexes are not slices."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")


def _load_dicom_series(folder: Path):
    pydicom = _require("pydicom")
    files = series_files(folder)
    if not files:
        raise VolumeError(f"{folder}: no DICOM files in the folder")
    slices = []
    for path in files:
        try:
            slices.append(pydicom.dcmread(str(path)))
        except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, OSError ...
            raise VolumeError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    _check_one_series(folder, slices)
    slices, slice_gap = _sort_slices(folder, slices)
    voxels = np.stack([_slice_hu(ds).T for ds in slices], axis=-1)  # (columns, rows, slices)
    row_mm, col_mm = (float(v) for v in getattr(slices[0], "PixelSpacing", (1.0, 1.0)))
    # PixelSpacing is (between rows, between columns); axis 0 of ``voxels`` runs along a row.
    spacing = (col_mm, row_mm, slice_gap)
    return _to_canonical(voxels, spacing, _LPS_TO_RAS @ _direction(slices[0]))


def _check_one_series(folder: Path, slices) -> None:
    uids = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in slices}
    if len(uids) > 1:
        raise VolumeError(f"{folder}: holds {len(uids)} series; put each series in its own folder")
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in slices}
    if len(shapes) > 1:
        raise VolumeError(f"{folder}: slices differ in size {sorted(shapes)}")


def _direction(ds) -> np.ndarray:
    """Columns: LPS directions of the column index, the row index and the slice normal."""
    iop = np.asarray(getattr(ds, "ImageOrientationPatient", (1, 0, 0, 0, 1, 0)), dtype=float)
    along_row, along_col = iop[:3], iop[3:]
    return np.stack([along_row, along_col, np.cross(along_row, along_col)], axis=1)


def _sort_slices(folder: Path, slices):
    """Order slices along the normal; InstanceNumber only when positions are missing."""
    if all(hasattr(ds, "ImagePositionPatient") for ds in slices):
        normal = _direction(slices[0])[:, 2]
        pos = np.array([np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal) for ds in slices])
        order = np.argsort(pos, kind="stable")
        return [slices[i] for i in order], _slice_gap(folder, pos[order], slices[0])
    if all(hasattr(ds, "InstanceNumber") for ds in slices):
        ordered = sorted(slices, key=lambda ds: int(ds.InstanceNumber))
        return ordered, _nominal_gap(slices[0])
    raise VolumeError(f"{folder}: slices have neither ImagePositionPatient nor InstanceNumber to order them")


def _nominal_gap(ds) -> float:
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        value = getattr(ds, key, None)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0


def _slice_gap(folder: Path, positions: np.ndarray, first) -> float:
    if len(positions) < 2:
        return _nominal_gap(first)
    gaps = np.diff(positions)
    if gaps.min() <= 1e-4:
        raise VolumeError(f"{folder}: two slices share one position; the folder mixes acquisitions")
    median = float(np.median(gaps))
    # A missing slice would silently stretch the anatomy, so uneven gaps are refused.
    if gaps.max() - gaps.min() > 0.1 * median:
        raise VolumeError(f"{folder}: uneven slice gaps ({gaps.min():.3g} to {gaps.max():.3g} mm); "
                          "is a slice missing?")
    return median


def _slice_hu(ds) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return ds.pixel_array.astype(np.float32) * slope + intercept


def _to_canonical(voxels: np.ndarray, spacing, direction: np.ndarray):
    """Reorder and flip axes to the closest RAS+ grid, as ``nib.as_closest_canonical`` does.

    ``direction[w, a]`` is the world (R, A, S) component ``w`` of array axis ``a``.
    """
    weights = np.abs(direction).astype(float)
    axis_of = [0, 0, 0]
    for _ in range(3):  # greedy on the largest cosine, so oblique axes cannot both claim one world axis
        world, axis = np.unravel_index(np.argmax(weights), weights.shape)
        axis_of[world] = int(axis)
        weights[world, :] = -1.0
        weights[:, axis] = -1.0
    voxels = np.transpose(voxels, axis_of)
    for world, axis in enumerate(axis_of):
        if direction[world, axis] < 0:
            voxels = np.flip(voxels, world)
    return np.ascontiguousarray(voxels), tuple(float(spacing[a]) for a in axis_of)


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def resampled_shape(shape, spacing, target: float | None) -> tuple[int, int, int]:
    """The grid size that keeps each axis's extent in mm at ``target`` mm per voxel."""
    if target is None:
        return tuple(int(n) for n in shape)
    return tuple(max(1, int(round(n * s / target))) for n, s in zip(shape, spacing))


def resample_image(voxels: np.ndarray, spacing, target: float | None) -> np.ndarray:
    """Trilinear resampling to ``target`` mm (voxel centres aligned, ``align_corners=False``)."""
    shape = resampled_shape(voxels.shape, spacing, target)
    if shape == voxels.shape:
        return voxels
    tensor = torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=shape, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def resample_mask(mask: np.ndarray, spacing, target: float | None) -> np.ndarray:
    """Nearest-neighbour resampling on the same voxel-centre convention as :func:`resample_image`."""
    shape = resampled_shape(mask.shape, spacing, target)
    if shape == mask.shape:
        return mask
    index = [np.minimum(((np.arange(new) + 0.5) * old / new).astype(np.int64), old - 1)
             for new, old in zip(shape, mask.shape)]
    return mask[np.ix_(*index)]


# --------------------------------------------------------------------------------------------
# Caches shared by the patches of one volume
# --------------------------------------------------------------------------------------------


def _stamp(path: Path) -> tuple:
    """Cheap change detector (names, sizes, mtimes), so caches never serve an edited volume."""
    files = series_files(path) if path.is_dir() else [path]
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


_VOLUME_HASHES: dict[tuple[str, tuple], str] = {}


def volume_hash(path: Path) -> str:
    """sha1 of the volume's bytes (every slice of a DICOM folder), hashed once per change."""
    path = Path(path)
    key = (str(path), _stamp(path))
    if key not in _VOLUME_HASHES:
        h = hashlib.sha1()
        for file in series_files(path) if path.is_dir() else [path]:
            h.update(file.name.encode() + b"\0" + file_digest(file).encode())
        _VOLUME_HASHES[key] = h.hexdigest()
    return _VOLUME_HASHES[key]


@functools.lru_cache(maxsize=4)
def _cached_volume(path: str, spacing: float | None, stamp: tuple) -> np.ndarray:
    voxels, native = load_volume(Path(path))
    return resample_image(voxels, native, spacing)


def resampled_volume(path: Path, spacing: float | None) -> np.ndarray:
    """The canonical volume at ``spacing`` mm, cached for the next patches of the same volume."""
    path = Path(path)
    return _cached_volume(str(path), spacing, _stamp(path))


@functools.lru_cache(maxsize=16)
def _cached_percentiles(path: str, spacing: float | None, stamp: tuple, windows) -> tuple[Window, ...]:
    flat = _cached_volume(path, spacing, stamp).ravel()
    sample = flat[:: max(1, flat.size // _PERCENTILE_SAMPLES)]
    return tuple((float(np.percentile(sample, lo)), float(np.percentile(sample, hi))) for lo, hi in windows)


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def cut_plane(voxels: np.ndarray, plane: str, centre, size: int) -> np.ndarray:
    """The ``size`` x ``size`` float patch of one plane through ``centre``, ``-inf`` outside the volume.

    Rows run anterior-to-posterior (axial) or superior-to-inferior (coronal, sagittal) so patches
    look upright; ``-inf`` clips to every window's minimum, i.e. pixel value 0.
    """
    fixed = _FIXED_AXIS[plane]
    index = [slice(None)] * 3
    index[fixed] = int(centre[fixed])
    section = voxels[tuple(index)]  # the two remaining axes, in canonical order
    out = np.full((size, size), -np.inf, dtype=np.float32)
    starts = [int(c) - size // 2 for axis, c in enumerate(centre) if axis != fixed]
    src = tuple(slice(max(s, 0), min(s + size, n)) for s, n in zip(starts, section.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, starts))
    out[dst] = section[src]
    return out.T[::-1]


def apply_window(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip to ``[lo, hi]`` and map linearly to 0..255, rounding halves up."""
    if hi <= lo:  # a constant volume has equal percentiles; everything maps to 0
        hi = lo + 1.0
    scaled = (np.clip(values.astype(np.float64), lo, hi) - lo) * 255.0 / (hi - lo)
    return np.floor(scaled + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class VolumePatchSource(ImageSource):
    """One 2D patch of a CT/MR volume.

    Attributes:
        path: NIfTI file or DICOM series folder.
        plane: ``axial``, ``coronal`` or ``sagittal``.
        centre: voxel index (canonical axes) of the patch centre on the resampled grid.
        patch_size: side of the square patch in voxels.
        windows: one (lo, hi) per channel, in HU or in percentiles of the volume.
        spacing: isotropic resampling in mm, or None for the native grid.
        intensity: ``hu`` or ``percentile``: how ``windows`` are read.
    """

    path: Path
    plane: str
    centre: tuple[int, int, int]
    patch_size: int
    windows: tuple[Window, ...]
    spacing: float | None
    intensity: str = "hu"

    def fingerprint(self) -> str:
        params = {"v": 1, "volume": volume_hash(self.path), "plane": self.plane, "centre": list(self.centre),
                  "size": self.patch_size, "windows": [list(w) for w in self.windows],
                  "spacing": self.spacing, "intensity": self.intensity}
        return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()

    def _bounds(self) -> tuple[Window, ...]:
        if self.intensity == "hu":
            return self.windows
        return _cached_percentiles(str(self.path), self.spacing, _stamp(Path(self.path)), self.windows)

    def load(self) -> np.ndarray:
        voxels = resampled_volume(self.path, self.spacing)
        patch = cut_plane(voxels, self.plane, self.centre, self.patch_size)
        channels = [apply_window(patch, lo, hi) for lo, hi in self._bounds()]
        return channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)

    def describe(self) -> str:
        return f"{self.path} [{self.plane} patch at voxel {tuple(self.centre)}, spacing {self.spacing} mm]"


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRow:
    """One parsed manifest row; ``line`` is its line in the CSV file (the header is line 1)."""

    line: int
    id: str
    image: Path
    mask: Path | None
    box: tuple[float, ...] | None
    group: str
    split: str | None
    labels: dict


def _resolve(cell: str, base: Path) -> Path:
    path = expand_path(cell.strip())
    return path if path.is_absolute() else base / path


def _parse_box(manifest: Path, line: int, row: dict) -> tuple[float, ...] | None:
    cells = [(row.get(c) or "").strip() for c in BOX_COLUMNS]
    if not any(cells):
        return None
    if not all(cells):
        raise DataError(f"{manifest} line {line}: box columns {', '.join(BOX_COLUMNS)} must all be "
                        f"filled or all empty, found {cells}")
    try:
        box = tuple(float(c) for c in cells)
    except ValueError:
        raise DataError(f"{manifest} line {line}: box cells must be numbers, found {cells}") from None
    if any(box[i + 3] < box[i] for i in range(3)):
        raise DataError(f"{manifest} line {line}: box end before start {box}")
    return box


def _check_header(manifest: Path, header: list[str], label_columns: list[str]) -> None:
    if "image" not in header:
        raise DataError(f"{manifest}: no 'image' column (found {header})")
    missing = [c for c in label_columns if c not in header]
    if missing:
        raise DataError(f"{manifest}: label column(s) {missing} not in the header {header}")
    box = [c for c in BOX_COLUMNS if c in header]
    if box and len(box) != len(BOX_COLUMNS):
        raise DataError(f"{manifest}: box columns must be all of {list(BOX_COLUMNS)}, found only {box}")


def _parse_row(manifest: Path, line: int, row: dict, label_columns: list[str]) -> ManifestRow:
    image_cell = (row.get("image") or "").strip()
    if not image_cell:
        raise DataError(f"{manifest} line {line}: empty 'image' cell")
    mask_cell = (row.get("mask") or "").strip()
    base = manifest.parent
    labels = {c: (row.get(c) or "").strip() for c in label_columns}
    return ManifestRow(
        line=line,
        id=(row.get("id") or "").strip() or image_cell,
        image=_resolve(image_cell, base),
        mask=_resolve(mask_cell, base) if mask_cell else None,
        box=_parse_box(manifest, line, row),
        group=(row.get("group") or "").strip() or image_cell,
        split=(row.get("split") or "").strip() or None,
        labels={c: v for c, v in labels.items() if v},
    )


def _unique_ids(manifest: Path, rows: list[ManifestRow], has_id: list[bool]) -> list[ManifestRow]:
    """Rows without an ``id`` that share an image (several lesions) get ``image#n`` ids."""
    counts: dict[str, int] = {}
    for row, explicit in zip(rows, has_id):
        if not explicit:
            counts[row.id] = counts.get(row.id, 0) + 1
    seen: dict[str, int] = {}
    out = []
    for row, explicit in zip(rows, has_id):
        rid = row.id
        if not explicit and counts[rid] > 1:
            seen[rid] = seen.get(rid, -1) + 1
            rid = f"{rid}#{seen[rid]}"
        out.append(replace(row, id=rid))
    ids = [r.id for r in out]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"{manifest}: row id(s) {dupes[:10]} appear more than once")
    return out


def read_manifest(manifest: Path, label_columns: list[str]) -> list[ManifestRow]:
    """Parse and check the manifest; file existence is checked by the reader, all rows at once."""
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        _check_header(manifest, header, label_columns)
        rows, has_id = [], []
        for row in reader:
            rows.append(_parse_row(manifest, reader.line_num, row, label_columns))
            has_id.append(bool((row.get("id") or "").strip()))
    if not rows:
        raise DataError(f"{manifest}: the manifest has a header but no rows")
    return _unique_ids(manifest, rows, has_id)


def _missing_files(manifest: Path, rows: list[ManifestRow]) -> None:
    missing = [(row.line, kind, path) for row in rows
               for kind, path in (("image", row.image), ("mask", row.mask))
               if path is not None and not path.exists()]
    if missing:
        listed = "; ".join(f"line {line}: {kind} {path}" for line, kind, path in missing[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise DataError(f"{manifest}: {len(missing)} file(s) named in the manifest are missing: {listed}{more}")


# --------------------------------------------------------------------------------------------
# Patch centres
# --------------------------------------------------------------------------------------------


def _row_rng(seed: int, row_id: str) -> np.random.Generator:
    # Seeded per row id, so adding or removing other rows leaves this row's patches unchanged.
    return np.random.default_rng([seed, int(hashlib.sha1(row_id.encode()).hexdigest()[:12], 16)])


def _centres_in_mask(rng: np.random.Generator, mask: np.ndarray, n: int) -> np.ndarray:
    voxels = np.argwhere(mask)
    pick = rng.choice(len(voxels), size=n, replace=len(voxels) < n)
    return voxels[pick]


def _centres_in_box(rng: np.random.Generator, lo, hi, n: int) -> np.ndarray:
    """Uniform voxels of the inclusive box ``lo..hi``, drawn without listing them all."""
    extent = tuple(int(h - l + 1) for l, h in zip(lo, hi))
    total = math.prod(extent)
    flat = rng.choice(total, size=n, replace=total < n)
    return np.stack(np.unravel_index(flat, extent), axis=1) + np.asarray(lo)


def _box_on_grid(box, shape, spacing, target):
    """Map an inclusive voxel box to the inclusive range of resampled voxels whose centres it covers."""
    new = resampled_shape(shape, spacing, target)
    lo, hi = [], []
    for axis in range(3):
        scale = new[axis] / shape[axis]
        start = min(new[axis] - 1, max(0, math.ceil(box[axis] * scale - 0.5)))
        stop = min(new[axis] - 1, math.floor((box[axis + 3] + 1) * scale - 0.5))
        lo.append(start)
        hi.append(max(start, stop))
    return lo, hi


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VolumeInfo:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


def _probe(path: Path) -> _VolumeInfo | str:
    """Decode a volume once to prove it is readable; the reason string when it is not."""
    try:
        voxels, spacing = load_volume(path)
    except VolumeError as exc:   # a corrupt file is skipped and listed, like an unreadable image
        return f"unreadable volume: {type(exc).__name__}: {exc}"
    except (ImportError, MemoryError, MedmtlError):
        raise
    except Exception as exc:  # decoders raise many unrelated types (EOFError, zlib.error ...) on corrupt data
        return f"unreadable volume: {type(exc).__name__}: {exc}"
    return _VolumeInfo(tuple(int(n) for n in voxels.shape), spacing)


def _read_mask(path: Path) -> np.ndarray | str:
    try:
        return load_mask(path)
    except VolumeError as exc:
        return f"unreadable mask: {type(exc).__name__}: {exc}"
    except (ImportError, MemoryError, MedmtlError):
        raise
    except Exception as exc:  # see _probe
        return f"unreadable mask: {type(exc).__name__}: {exc}"


@READERS.register("volume", targets=())  # targets are the configured label_columns
class VolumeReader(Reader):
    """CT/MR volumes listed in a CSV manifest, sampled as 2D patches around each lesion.

    Args:
        manifest: CSV file, one row per lesion or volume (see the module docstring for columns).
        label_columns: manifest columns read as targets; an empty cell means no label.
        windows: one (lo, hi) per output channel (1 or 3): HU bounds when ``intensity`` is ``hu``,
            percentiles of each volume when it is ``percentile`` (default then ``(1, 99)`` x 3).
        intensity: ``hu`` for CT, ``percentile`` for MR whose intensities have no absolute scale.
        spacing: isotropic resampling in mm before patches are cut; None keeps the native grid.
        patch_size: side of the square patches in voxels of the resampled grid.
        patches_per_lesion: patches drawn per manifest row.
        planes: planes cycled through, patch ``k`` is cut in ``planes[k % len(planes)]``.
        seed: seed of the patch centres; the same seed gives the same centres.
    """

    name: Literal["volume"] = "volume"
    manifest: FilePath
    label_columns: list[str] = []
    windows: list[Window] = HU_WINDOWS
    intensity: Literal["hu", "percentile"] = "hu"
    spacing: PositiveFloat | None = 1.0
    patch_size: int = Field(32, ge=1)
    patches_per_lesion: int = Field(8, ge=1)
    planes: tuple[Plane, ...] = Field(("axial", "coronal", "sagittal"), min_length=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _percentile_default(cls, data):
        # The HU default makes no sense as percentiles, so percentile mode gets its own default.
        if isinstance(data, dict) and data.get("intensity") == "percentile" and "windows" not in data:
            data = {**data, "windows": PERCENTILE_WINDOWS}
        return data

    @model_validator(mode="after")
    def _check_windows(self):
        if len(self.windows) not in (1, 3):
            raise ValueError(f"windows: give 1 (grey) or 3 (colour) windows, found {len(self.windows)}")
        for lo, hi in self.windows:
            if not lo < hi:
                raise ValueError(f"windows: each window needs lo < hi, found ({lo}, {hi})")
            if self.intensity == "percentile" and not (0 <= lo and hi <= 100):
                raise ValueError(f"windows: percentiles must lie in 0..100, found ({lo}, {hi})")
        return self

    def read(self) -> ReadResult:
        rows = read_manifest(self.manifest, self.label_columns)
        _missing_files(self.manifest, rows)
        records, skipped, infos = [], [], {}
        for row in rows:
            if row.image not in infos:
                infos[row.image] = _probe(row.image)
            info = infos[row.image]
            if isinstance(info, str):
                skipped.append(Skipped(str(row.image), info))
                continue
            centres = self._centres(row, info, skipped)
            if centres is not None:
                records.extend(self._records(row, centres))
        if not records:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
            raise DataError(f"{self.manifest}: no patches, every row was skipped ({reasons})")
        return ReadResult(records, self._targets(rows), skipped)

    def _centres(self, row: ManifestRow, info: _VolumeInfo, skipped: list[Skipped]) -> np.ndarray | None:
        rng = _row_rng(self.seed, row.id)
        if row.mask is not None:
            mask = self._row_mask(row, info, skipped)
            return None if mask is None else _centres_in_mask(rng, mask, self.patches_per_lesion)
        if row.box is not None:
            self._check_box(row, info)
            lo, hi = _box_on_grid(row.box, info.shape, info.spacing, self.spacing)
        else:
            lo, hi = [0, 0, 0], [n - 1 for n in resampled_shape(info.shape, info.spacing, self.spacing)]
        return _centres_in_box(rng, lo, hi, self.patches_per_lesion)

    def _row_mask(self, row: ManifestRow, info: _VolumeInfo, skipped: list[Skipped]) -> np.ndarray | None:
        mask = _read_mask(row.mask)
        if isinstance(mask, str):
            skipped.append(Skipped(str(row.mask), mask))
            return None
        if mask.shape != info.shape:
            raise DataError(f"{self.manifest} line {row.line}: mask {row.mask} has shape {mask.shape} "
                            f"but image {row.image} has shape {info.shape}")
        if not mask.any():
            skipped.append(Skipped(str(row.mask), "mask is empty: no lesion voxel to centre patches on"))
            return None
        return resample_mask(mask, info.spacing, self.spacing)

    def _check_box(self, row: ManifestRow, info: _VolumeInfo) -> None:
        if any(row.box[i] < 0 or row.box[i + 3] > info.shape[i] - 1 for i in range(3)):
            raise DataError(f"{self.manifest} line {row.line}: box {row.box} lies outside image "
                            f"{row.image} of shape {info.shape} (indices are inclusive, from 0)")

    def _records(self, row: ManifestRow, centres: np.ndarray) -> list[Record]:
        windows = tuple((float(lo), float(hi)) for lo, hi in self.windows)
        out = []
        for k, centre in enumerate(centres):
            plane = self.planes[k % len(self.planes)]
            source = VolumePatchSource(path=row.image, plane=plane, centre=tuple(int(c) for c in centre),
                                       patch_size=self.patch_size, windows=windows, spacing=self.spacing,
                                       intensity=self.intensity)
            out.append(Record(id=f"{row.id}/p{k}-{plane}", source=source, split=row.split,
                              group=row.group, labels=dict(row.labels)))
        return out

    def _targets(self, rows: list[ManifestRow]) -> dict[str, TargetInfo]:
        # Classes come from every row, skipped ones included, so a bad file cannot drop a class.
        return {col: TargetInfo("multiclass", tuple(sorted({r.labels[col] for r in rows if col in r.labels})))
                for col in self.label_columns}
