"""The volume reader on real NIfTI files and DICOM series written into tmp_path (no mocks)."""
from __future__ import annotations

import csv
import random
import sys

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from medmtl.data.readers._base import READERS  # noqa: E402
from medmtl.data.readers.volume import VolumePatchSource, VolumeReader, _cached_volume, load_volume, resampled_volume  # noqa: E402
from medmtl.errors import DataError  # noqa: E402

HU = (-1000, -500, 0, 300)


def write_nifti(path, voxels, spacing=(1.0, 1.0, 1.0), flip_xy=False):
    """Save ``voxels`` with a diagonal affine; ``flip_xy`` stores the LPS-like (-x, -y) axes."""
    signs = (-1.0, -1.0, 1.0) if flip_xy else (1.0, 1.0, 1.0)
    affine = np.diag([s * d for s, d in zip(signs, spacing)] + [1.0])
    nib.save(nib.Nifti1Image(np.asarray(voxels), affine), str(path))
    return path


def write_dicom_series(folder, hu, pixel_spacing=(0.8, 0.7), slice_gap=2.5):
    """One CT slice per z of ``hu`` (x, y, z), in shuffled file order, InstanceNumber reversed.

    Stored values are ``hu + 1024`` as uint16 with RescaleIntercept -1024, as scanners do.
    """
    folder.mkdir()
    series = generate_uid()
    n = hu.shape[2]
    names = [f"f{i:03d}.dcm" for i in range(n)]
    random.Random(3).shuffle(names)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / names[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.InstanceNumber = n - k  # wrong on purpose: the position must win
        ds.ImagePositionPatient = [-20.0, -30.0, 100.0 + slice_gap * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_gap
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.PixelData = (hu[:, :, k].T + 1024).astype(np.uint16).tobytes()  # rows are y, columns x
        ds.save_as(str(folder / names[k]), enforce_file_format=True)
    return folder


def write_manifest(path, rows):
    header = sorted({k for row in rows for k in row}, key=lambda c: (c != "image", c))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def hu_slabs(shape=(4, 4, 4)):
    """HU value set by x index: x=0 -1000, x=1 -500, x=2 0, x=3 300."""
    voxels = np.empty(shape, dtype=np.int16)
    for x, value in enumerate(HU):
        voxels[x] = value
    return voxels


def blob_mask(shape=(16, 16, 16)):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[5:8, 9:11, 3:6] = 1
    mask[12, 2, shape[2] - 2] = 1  # a lone voxel far from the blob
    return mask


# ---------------------------------------------------------------- windowing


def test_hu_windows_map_to_expected_uint8(tmp_path):
    path = write_nifti(tmp_path / "slabs.nii.gz", hu_slabs())
    windows = ((-800.0, -200.0), (-200.0, 400.0), (-1000.0, 400.0))
    patch = VolumePatchSource(path, "axial", (2, 2, 2), 4, windows, None).load()
    # By hand, (clip(v) - lo) * 255 / (hi - lo), halves rounded up:
    #   (-800,-200): -1000 -> 0, -500 -> 300*255/600 = 127.5 -> 128, 0 -> 255, 300 -> 255
    #   (-200, 400): -1000 -> 0, -500 -> 0, 0 -> 200*255/600 = 85, 300 -> 500*255/600 = 212.5 -> 213
    #   (-1000,400): -1000 -> 0, -500 -> 500*255/1400 = 91.07 -> 91, 0 -> 182.14 -> 182, 300 -> 236.79 -> 237
    expected = np.array([[0, 128, 255, 255], [0, 0, 85, 213], [0, 91, 182, 237]], dtype=np.uint8)
    assert patch.dtype == np.uint8 and patch.shape == (4, 4, 3)
    for channel in range(3):
        assert (patch[:, :, channel] == expected[channel]).all()  # columns run along x


def test_padding_outside_the_volume_is_zero_in_every_channel(tmp_path):
    path = write_nifti(tmp_path / "slabs.nii.gz", hu_slabs() + 1500)  # all values above every window
    patch = VolumePatchSource(path, "coronal", (0, 0, 0), 4, ((-800.0, -200.0),) * 3, None).load()
    # Centre x=0, z=0: the volume fills the columns right of the centre (x >= 0) and the rows
    # above it (rows run superior first); the rest is padding.
    inside = np.zeros((4, 4), dtype=bool)
    inside[:2, 2:] = True
    assert (patch[inside] == 255).all() and (patch[~inside] == 0).all()


def test_percentile_mode_spans_the_volume(tmp_path):
    voxels = np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10)
    path = write_nifti(tmp_path / "mr.nii.gz", voxels)
    reader = VolumeReader(manifest=write_manifest(tmp_path / "m.csv", [{"image": "mr.nii.gz"}]),
                          intensity="percentile")
    assert reader.windows == [(1.0, 99.0)] * 3
    assert all(r.source.intensity == "percentile" for r in reader.read().records)
    # Centre 5 of a 10-voxel patch: the patch covers the whole 10 x 10 section, no padding.
    patch = VolumePatchSource(path, "sagittal", (3, 5, 5), 10, ((1.0, 99.0),) * 3, None, "percentile").load()
    lo, hi = np.percentile(voxels, 1), np.percentile(voxels, 99)
    plane = voxels[3].T[::-1]
    expected = np.floor((np.clip(plane, lo, hi) - lo) * 255.0 / (hi - lo) + 0.5).astype(np.uint8)
    assert (patch[:, :, 0] == expected).all()


# ---------------------------------------------------------------- DICOM


def test_dicom_series_sorted_by_position_and_rescaled_to_hu(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 1500, size=(6, 5, 7)).astype(np.int16)  # (x, y, z)
    series = write_dicom_series(tmp_path / "series", hu)
    nifti = write_nifti(tmp_path / "same.nii.gz", hu, spacing=(0.7, 0.8, 2.5), flip_xy=True)

    dcm_voxels, dcm_spacing = load_volume(series)
    nii_voxels, nii_spacing = load_volume(nifti)
    # DICOM's LPS frame and the NIfTI's (-x, -y) affine both reorient to RAS by flipping x and y.
    assert np.array_equal(dcm_voxels, hu[::-1, ::-1, :].astype(np.float32))
    assert np.array_equal(dcm_voxels, nii_voxels)
    assert dcm_spacing == pytest.approx((0.7, 0.8, 2.5)) and nii_spacing == pytest.approx(dcm_spacing)

    windows = ((-1000.0, 400.0),) * 3
    for plane in ("axial", "coronal", "sagittal"):
        a = VolumePatchSource(series, plane, (2, 3, 4), 6, windows, None).load()
        b = VolumePatchSource(nifti, plane, (2, 3, 4), 6, windows, None).load()
        assert np.array_equal(a, b)


def test_dicom_and_nifti_patches_agree_after_resampling(tmp_path):
    hu = np.random.default_rng(1).integers(-1000, 400, size=(6, 5, 4)).astype(np.int16)
    series = write_dicom_series(tmp_path / "series", hu, pixel_spacing=(1.0, 1.0), slice_gap=2.0)
    nifti = write_nifti(tmp_path / "same.nii.gz", hu, spacing=(1.0, 1.0, 2.0), flip_xy=True)
    assert resampled_volume(series, 1.0).shape == (6, 5, 8)
    assert np.allclose(resampled_volume(series, 1.0), resampled_volume(nifti, 1.0))


# ---------------------------------------------------------------- patch centres


def _mask_manifest(tmp_path, seed_rows=2):
    mask = blob_mask()
    write_nifti(tmp_path / "ct.nii.gz", np.full(mask.shape, -100, dtype=np.int16))
    write_nifti(tmp_path / "lesion.nii.gz", mask)
    other = np.zeros_like(mask)
    other[1:3, 1:3, 10:12] = 1
    write_nifti(tmp_path / "lesion2.nii.gz", other)
    rows = [{"image": "ct.nii.gz", "mask": "lesion.nii.gz"}, {"image": "ct.nii.gz", "mask": "lesion2.nii.gz"}]
    return write_manifest(tmp_path / "m.csv", rows[:seed_rows]), {"ct.nii.gz#0": mask, "ct.nii.gz#1": other}


def test_centres_lie_inside_the_mask_and_cycle_planes(tmp_path):
    manifest, masks = _mask_manifest(tmp_path)
    _cached_volume.cache_clear()
    result = VolumeReader(manifest=manifest, patches_per_lesion=7, patch_size=8).read()
    assert _cached_volume.cache_info().misses == 0  # read() cut no patch
    assert len(result.records) == 14 and not result.skipped
    for row_id, mask in masks.items():
        recs = [r for r in result.records if r.id.startswith(row_id + "/")]
        assert len(recs) == 7
        assert {r.source.plane for r in recs} == {"axial", "coronal", "sagittal"}
        assert [r.source.plane for r in recs[:3]] == ["axial", "coronal", "sagittal"]
        for rec in recs:
            assert mask[rec.source.centre] == 1, rec.id
            assert rec.id.endswith(f"-{rec.source.plane}")
    patch = result.records[0].source.load()
    assert patch.shape == (8, 8, 3) and patch.dtype == np.uint8


def test_centres_are_deterministic_per_seed(tmp_path):
    manifest, _ = _mask_manifest(tmp_path)

    def centres(seed):
        return [r.source.centre for r in VolumeReader(manifest=manifest, seed=seed).read().records]

    assert centres(0) == centres(0)
    assert centres(0) != centres(1)


def test_centres_inside_the_resampled_mask(tmp_path):
    mask = blob_mask((16, 16, 8))
    write_nifti(tmp_path / "ct.nii.gz", np.zeros(mask.shape, dtype=np.int16), spacing=(1.0, 1.0, 2.0))
    write_nifti(tmp_path / "lesion.nii.gz", mask, spacing=(1.0, 1.0, 2.0))
    manifest = write_manifest(tmp_path / "m.csv", [{"image": "ct.nii.gz", "mask": "lesion.nii.gz"}])
    records = VolumeReader(manifest=manifest, spacing=1.0, patches_per_lesion=20).read().records
    for rec in records:
        x, y, z = rec.source.centre
        assert mask[x, y, int((z + 0.5) / 2)] == 1  # resampled voxel z covers native voxel (z + 0.5) / 2


def test_box_and_whole_volume_regions(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz", np.zeros((12, 10, 8), dtype=np.int16))
    box = {"x0": 2, "y0": 3, "z0": 4, "x1": 5, "y1": 3, "z1": 6}
    blank = {k: "" for k in box}
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "boxed", "image": "ct.nii.gz", **box},
                                                   {"id": "whole", "image": "ct.nii.gz", **blank}])
    records = VolumeReader(manifest=manifest, patches_per_lesion=30).read().records
    boxed = [r.source.centre for r in records if r.id.startswith("boxed/")]
    whole = [r.source.centre for r in records if r.id.startswith("whole/")]
    assert all(2 <= x <= 5 and y == 3 and 4 <= z <= 6 for x, y, z in boxed)
    assert all(0 <= x < 12 and 0 <= y < 10 and 0 <= z < 8 for x, y, z in whole)
    assert len({c for c in whole}) == 30  # drawn without replacement when the region allows


# ---------------------------------------------------------------- resampling


def test_resampling_preserves_extent_in_mm(tmp_path):
    voxels = np.full((40, 40, 10), -1000, dtype=np.int16)  # 0.5 x 0.5 x 2 mm: a 20 mm cube
    voxels[10:30, 10:30, 2:7] = 1000  # a 10 x 10 x 10 mm object
    path = write_nifti(tmp_path / "aniso.nii.gz", voxels, spacing=(0.5, 0.5, 2.0))
    resampled = resampled_volume(path, 1.0)
    assert resampled.shape == (20, 20, 20)
    inside = resampled > 0
    extents = [int(inside.any(axis=tuple(a for a in range(3) if a != axis)).sum()) for axis in range(3)]
    assert extents == [10, 10, 10]
    # A coronal patch through the object shows a square, not the native 20 x 5 voxel rectangle.
    patch = VolumePatchSource(path, "coronal", (10, 10, 10), 16, ((-1000.0, 1000.0),), 1.0).load()
    assert patch.ndim == 2
    rows, cols = np.nonzero(patch > 127)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (10, 10)


# ---------------------------------------------------------------- bad input


def test_missing_files_raise_with_line_numbers(tmp_path):
    write_nifti(tmp_path / "ok.nii.gz", np.zeros((4, 4, 4), dtype=np.int16))
    manifest = write_manifest(tmp_path / "m.csv", [{"image": "ok.nii.gz", "mask": ""},
                                                   {"image": "gone.nii.gz", "mask": ""},
                                                   {"image": "ok.nii.gz", "mask": "nomask.nii.gz"}])
    with pytest.raises(DataError, match=r"2 file\(s\).*line 3: image .*gone\.nii\.gz.*line 4: mask .*nomask"):
        VolumeReader(manifest=manifest).read()


def test_mask_shape_mismatch_names_both_files(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz", np.zeros((8, 8, 8), dtype=np.int16))
    write_nifti(tmp_path / "small.nii.gz", np.ones((8, 8, 6), dtype=np.uint8))
    manifest = write_manifest(tmp_path / "m.csv", [{"image": "ct.nii.gz", "mask": "small.nii.gz"}])
    with pytest.raises(DataError, match=r"line 2: mask .*small\.nii\.gz.*\(8, 8, 6\).*ct\.nii\.gz.*\(8, 8, 8\)"):
        VolumeReader(manifest=manifest).read()


def test_corrupt_volumes_and_empty_masks_are_skipped_and_counted(tmp_path):
    write_nifti(tmp_path / "ok.nii.gz", np.zeros((6, 6, 6), dtype=np.int16))
    (tmp_path / "bad.nii.gz").write_bytes(b"this is not gzip at all")
    (tmp_path / "junk_series").mkdir()
    (tmp_path / "junk_series" / "a.dcm").write_bytes(b"\x00" * 10)
    write_nifti(tmp_path / "empty.nii.gz", np.zeros((6, 6, 6), dtype=np.uint8))
    manifest = write_manifest(tmp_path / "m.csv", [
        {"image": "ok.nii.gz", "mask": ""}, {"image": "bad.nii.gz", "mask": ""},
        {"image": "junk_series", "mask": ""}, {"image": "ok.nii.gz", "mask": "empty.nii.gz"},
    ])
    result = VolumeReader(manifest=manifest, patches_per_lesion=2).read()
    assert len(result.records) == 2  # the one good row
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in result.skipped}
    assert set(reasons) == {"bad.nii.gz", "junk_series", "empty.nii.gz"}
    assert reasons["bad.nii.gz"].startswith("unreadable volume")
    assert "not a readable DICOM file" in reasons["junk_series"]
    assert "mask is empty" in reasons["empty.nii.gz"]


def test_every_row_unreadable_is_an_error(tmp_path):
    (tmp_path / "bad.nii").write_bytes(b"garbage")
    manifest = write_manifest(tmp_path / "m.csv", [{"image": "bad.nii"}])
    with pytest.raises(DataError, match=r"no patches, every row was skipped .*bad\.nii: unreadable volume"):
        VolumeReader(manifest=manifest).read()


def test_manifest_and_config_errors(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz", np.zeros((4, 4, 4), dtype=np.int16))
    no_label = write_manifest(tmp_path / "a.csv", [{"image": "ct.nii.gz"}])
    with pytest.raises(DataError, match=r"label column\(s\) \['grade'\] not in the header"):
        VolumeReader(manifest=no_label, label_columns=["grade"]).read()
    half_box = write_manifest(tmp_path / "b.csv", [{"image": "ct.nii.gz", "x0": 1, "y0": 1, "z0": 1,
                                                    "x1": 2, "y1": "", "z1": 2}])
    with pytest.raises(DataError, match=r"line 2: box columns .* must all be filled or all empty"):
        VolumeReader(manifest=half_box).read()
    outside = write_manifest(tmp_path / "c.csv", [{"image": "ct.nii.gz", "x0": 1, "y0": 1, "z0": 1,
                                                   "x1": 4, "y1": 2, "z1": 2}])
    with pytest.raises(DataError, match=r"line 2: box .* lies outside image .*shape \(4, 4, 4\)"):
        VolumeReader(manifest=outside).read()
    with pytest.raises(ValueError, match=r"percentiles must lie in 0\.\.100"):
        VolumeReader(manifest=no_label, intensity="percentile", windows=[(-800, -200)])
    with pytest.raises(ValueError, match=r"each window needs lo < hi"):
        VolumeReader(manifest=no_label, windows=[(400, -200)])


def test_missing_nibabel_names_the_extra(tmp_path, monkeypatch):
    path = write_nifti(tmp_path / "ct.nii.gz", np.zeros((4, 4, 4), dtype=np.int16))
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ImportError, match=r"pip install 'medmtl\[volumes\]'"):
        load_volume(path)


# ---------------------------------------------------------------- groups, labels, ids


def test_groups_splits_and_labels_come_from_the_manifest(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", np.zeros((6, 6, 6), dtype=np.int16))
    write_nifti(tmp_path / "b.nii.gz", np.zeros((6, 6, 6), dtype=np.int16))
    manifest = write_manifest(tmp_path / "m.csv", [
        {"image": "a.nii.gz", "group": "P1", "split": "training", "malignant": "1", "subtype": "adeno"},
        {"image": "a.nii.gz", "group": "P1", "split": "training", "malignant": "0", "subtype": ""},
        {"image": "b.nii.gz", "group": "", "split": "", "malignant": "", "subtype": "squamous"},
    ])
    result = VolumeReader(manifest=manifest, label_columns=["malignant", "subtype"], patches_per_lesion=3).read()
    by_row = {}
    for rec in result.records:
        by_row.setdefault(rec.id.split("/p")[0], []).append(rec)
    assert sorted(by_row) == ["a.nii.gz#0", "a.nii.gz#1", "b.nii.gz"]
    assert all(r.group == "P1" and r.split == "train" for r in by_row["a.nii.gz#0"] + by_row["a.nii.gz#1"])
    assert all(r.labels == {"malignant": "1", "subtype": "adeno"} for r in by_row["a.nii.gz#0"])
    assert all(r.labels == {"malignant": "0"} for r in by_row["a.nii.gz#1"])  # empty cell: label absent
    assert all(r.group == "b.nii.gz" and r.split is None and r.labels == {"subtype": "squamous"}
               for r in by_row["b.nii.gz"])
    assert result.targets["malignant"].classes == ("0", "1")
    assert result.targets["subtype"].classes == ("adeno", "squamous")
    assert READERS.get("volume") is VolumeReader


def test_fingerprint_follows_content_and_patch_parameters(tmp_path):
    path = write_nifti(tmp_path / "ct.nii.gz", hu_slabs())
    windows = ((-1000.0, 400.0),) * 3
    a = VolumePatchSource(path, "axial", (1, 1, 1), 4, windows, None)
    assert a.fingerprint() == VolumePatchSource(path, "axial", (1, 1, 1), 4, windows, None).fingerprint()
    assert a.fingerprint() != VolumePatchSource(path, "coronal", (1, 1, 1), 4, windows, None).fingerprint()
    assert a.fingerprint() != VolumePatchSource(path, "axial", (1, 1, 2), 4, windows, None).fingerprint()
    before = a.fingerprint()
    write_nifti(path, hu_slabs() + 1)
    assert a.fingerprint() != before
    assert "axial" in a.describe() and str(path) in a.describe()
