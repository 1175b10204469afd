"""Broken copies of the real datasets, made in tmp_path: every bad file is skipped and listed or
stops the run with an error naming the file and the value, never silently dropped.

The shared datasets are only read; each test copies a few real files and breaks the copies.
"""
from __future__ import annotations

import csv
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from medmtl import api
from medmtl.cli import app
from medmtl.config.loader import parse_config
from medmtl.data.inspect import format_text, inspect
from medmtl.data.pipeline import prepare
from medmtl.data.readers.mias import MIASReader
from medmtl.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def shared(name: str) -> Path:
    root = Path(os.environ.get("MEDMTL_DATA", "../shared/datasets")).expanduser()
    root = root if root.is_absolute() else REPO / root
    path = root / name
    if not path.exists():
        pytest.skip(f"shared dataset {name} not found at {path} (set MEDMTL_DATA)")
    return path


def experiment(tmp_path: Path, *tasks: dict) -> dict:
    return {"name": "bad_input", "cache_dir": str(tmp_path / "cache"),
            "run_dir": str(tmp_path / "runs" / "bad_input"), "tasks": list(tasks)}


def config(tmp_path: Path, *tasks: dict):
    return parse_config(experiment(tmp_path, *tasks), "test")


def brain_task(root: Path, **kw) -> dict:
    return {"name": "brain", "kind": "binary", "classes": ["no", "yes"], "target": "class",
            "reader": {"name": "folder", "root": str(root), "splits": "none"},
            "image": {"size": 32, "mode": "L"}, **kw}


def copy_images(src: Path, dst: Path, n: int, start: int = 0) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[start:start + n]
    return [Path(shutil.copy2(p, dst / p.name)) for p in files]


def skipped_of(data, task: str) -> dict[str, str]:
    return {s.path: s.reason for s in data.source_of(task).skipped}


# -- (1) unreadable images in a class-folder dataset ---------------------------------------------
@pytest.fixture
def broken_brain(tmp_path):
    """5 + 5 real brain MRI images, a truncated JPEG in yes/ and a text file named .png in no/."""
    src = shared("brain_tumor_mri")
    root = tmp_path / "brain"
    copy_images(src / "yes", root / "yes", 5)
    copy_images(src / "no", root / "no", 5)
    whole = (src / "yes" / "Y1.jpg").read_bytes()
    truncated = root / "yes" / "truncated.jpg"
    truncated.write_bytes(whole[: len(whole) * 2 // 5])
    fake = root / "no" / "notes.png"
    fake.write_text("this is a text file, not a PNG\n")
    return root, truncated, fake


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, broken_brain, caplog):
    root, truncated, fake = broken_brain
    cfg = config(tmp_path, brain_task(root))
    with caplog.at_level(logging.WARNING, logger="medmtl.data"):
        data = prepare(cfg, progress=False)
    skipped = skipped_of(data, "brain")
    assert set(skipped) == {str(truncated), str(fake)}
    assert all(reason.startswith("unreadable image") for reason in skipped.values()), skipped
    assert "truncated" in skipped[str(truncated)].lower()
    # counts exclude both files: 10 readable images remain
    src = data.source_of("brain")
    assert len(src) == 10 and str(truncated) not in {r.source.describe() for r in src.cached.records}
    report = inspect(data)["tasks"]["brain"]
    assert report["images"] == 10
    assert sum(sum(c.values()) for c in report["splits"].values()) == 10
    assert {s["path"] for s in report["skipped"]} == {str(truncated), str(fake)}
    text = format_text(inspect(data))
    assert "skipped 2 file(s)" in text and str(truncated) in text and str(fake) in text
    # the run log names both
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert str(truncated) in logged and str(fake) in logged

    # a second run on the warm cache lists them again (never decoded into the cache, never forgotten)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medmtl.data"):
        again = prepare(cfg, progress=False)
    assert set(skipped_of(again, "brain")) == {str(truncated), str(fake)}
    assert len(again.source_of("brain")) == 10
    assert str(fake) in "\n".join(r.getMessage() for r in caplog.records)


def test_inspect_data_writes_skipped_csv(tmp_path, broken_brain):
    root, truncated, fake = broken_brain
    cfg = config(tmp_path, brain_task(root))
    report = api.inspect_data(cfg, progress=False)
    assert report["tasks"]["brain"]["images"] == 10
    path = tmp_path / "runs" / "bad_input" / "skipped.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["path"] for r in rows} == {str(truncated), str(fake)}
    assert {r["task"] for r in rows} == {"brain"}
    assert all(r["reason"].startswith("unreadable image") for r in rows)


def test_cli_lists_skipped_files(tmp_path, broken_brain):
    root, truncated, fake = broken_brain
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(tmp_path, brain_task(root))))
    result = CliRunner().invoke(app, ["data", "inspect", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "brain (binary, main): 10 images" in result.stdout
    assert "skipped 2 file(s)" in result.stdout
    assert f"{truncated}: unreadable image" in result.stdout
    assert f"{fake}: unreadable image" in result.stdout
    json_result = CliRunner().invoke(app, ["data", "inspect", str(path), "--json", "--no-progress"])
    assert json_result.exit_code == 0
    assert str(fake) in json_result.stdout
    assert (tmp_path / "runs" / "bad_input" / "skipped.csv").is_file()


def test_non_image_file_is_listed_not_dropped(tmp_path):
    src = shared("brain_tumor_mri")
    root = tmp_path / "brain"
    copy_images(src / "yes", root / "yes", 4)
    copy_images(src / "no", root / "no", 4)
    readme = root / "no" / "README.txt"
    readme.write_text("notes")
    data = prepare(config(tmp_path, brain_task(root)), progress=False)
    assert skipped_of(data, "brain") == {str(readme): "not an image file (extension '.txt')"}


def test_folder_without_images_is_a_data_error(tmp_path):
    root = tmp_path / "empty"
    (root / "no").mkdir(parents=True)
    (root / "yes").mkdir()
    with pytest.raises(DataError, match=rf"no images found under {re.escape(str(root))}"):
        prepare(config(tmp_path, brain_task(root)), progress=False)


# -- (2) labels outside the declared classes ------------------------------------------------------
def test_extra_class_folder_is_an_error_naming_file_and_value(tmp_path):
    src = shared("brain_tumor_mri")
    root = tmp_path / "brain"
    copy_images(src / "yes", root / "yes", 4)
    copy_images(src / "no", root / "no", 4)
    (extra,) = copy_images(src / "yes", root / "maybe", 1, start=20)
    with pytest.raises(DataError, match=rf"label 'maybe' of {re.escape(str(extra))} .*declared classes \['no', 'yes'\]"):
        prepare(config(tmp_path, brain_task(root)), progress=False)


def test_cli_label_error_has_no_traceback(tmp_path):
    src = shared("brain_tumor_mri")
    root = tmp_path / "brain"
    copy_images(src / "yes", root / "yes", 4)
    copy_images(src / "no", root / "no", 4)
    (extra,) = copy_images(src / "no", root / "maybe", 1, start=20)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(tmp_path, brain_task(root))))
    result = CliRunner().invoke(app, ["data", "inspect", str(path), "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "'maybe'" in result.stderr and str(extra) in result.stderr
    assert "Traceback" not in result.output


def test_a_folder_inside_a_class_folder_is_listed_not_passed_over(tmp_path):
    src = shared("brain_tumor_mri")
    root = tmp_path / "brain"
    copy_images(src / "yes", root / "yes", 4)
    copy_images(src / "no", root / "no", 4)
    nested = root / "no" / "more"
    copy_images(src / "no", nested, 3, start=4)
    data = prepare(config(tmp_path, brain_task(root)), progress=False)
    assert skipped_of(data, "brain") == {str(nested): "a folder inside class folder 'no' (3 files not read; images "
                                                      "go directly in ROOT/CLASS)"}
    assert len(data.source_of("brain")) == 8


def write_manifest(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def manifest_task(csv_path: Path, **reader) -> dict:
    return {"name": "man", "kind": "binary", "classes": ["no", "yes"], "target": "label",
            "reader": {"name": "manifest", "path": str(csv_path), "image_column": "image",
                       "label_columns": ["label"], **reader},
            "image": {"size": 32, "mode": "L"}}


def test_manifest_label_outside_classes(tmp_path):
    src = shared("brain_tumor_mri")
    images = copy_images(src / "yes", tmp_path / "imgs", 4) + copy_images(src / "no", tmp_path / "imgs", 4)
    labels = ["yes"] * 4 + ["no"] * 3 + ["maybe"]
    csv_path = write_manifest(tmp_path / "labels.csv", ["image", "label"],
                              [[f"imgs/{p.name}", lab] for p, lab in zip(images, labels)])
    with pytest.raises(DataError, match=rf"label 'maybe' of {re.escape(str(images[-1]))} .*\['no', 'yes'\]"):
        prepare(config(tmp_path, manifest_task(csv_path)), progress=False)


# -- (3) a mask whose size differs from its image -------------------------------------------------
def busi_pairs(per_class: int = 3) -> dict[str, list[tuple[Path, Path]]]:
    """The first ``per_class`` BUSI images of each class that have exactly one mask."""
    root = shared("busi")
    out = {}
    for cls in ("benign", "malignant", "normal"):
        pairs = []
        for img in sorted((root / cls).glob("*.png")):
            if "_mask" in img.stem:
                continue
            mask = img.with_name(f"{img.stem}_mask.png")
            if mask.is_file() and not img.with_name(f"{img.stem}_mask_1.png").exists():
                pairs.append((img, mask))
            if len(pairs) == per_class:
                break
        out[cls] = pairs
    return out


def copy_busi(dst: Path, per_class: int = 3) -> dict[str, list[tuple[Path, Path]]]:
    copied = {}
    for cls, pairs in busi_pairs(per_class).items():
        (dst / cls).mkdir(parents=True)
        copied[cls] = [(Path(shutil.copy2(i, dst / cls / i.name)), Path(shutil.copy2(m, dst / cls / m.name)))
                       for i, m in pairs]
    return copied


def resize_file(path: Path, extra: int = 7) -> None:
    with Image.open(path) as img:
        img.load()
        resized = img.resize((img.width + extra, img.height), Image.Resampling.NEAREST)
    resized.save(path)


def busi_task(root: Path, name="busi_seg", kind="segmentation", target="mask") -> dict:
    return {"name": name, "kind": kind, "target": target, "group_key": "image",
            "reader": {"name": "busi", "root": str(root)}, "image": {"size": 32, "mode": "L"}}


def test_busi_mask_size_mismatch_names_mask_and_image(tmp_path):
    root = tmp_path / "busi"
    copied = copy_busi(root)
    image, mask = copied["malignant"][1]
    resize_file(mask)
    with pytest.raises(DataError, match=rf"mask {re.escape(str(mask))} .*image {re.escape(str(image))}"):
        prepare(config(tmp_path, busi_task(root)), progress=False)


def test_busi_image_without_a_mask_is_kept_for_its_class_and_listed(tmp_path):
    root = tmp_path / "busi"
    copied = copy_busi(root)
    image, mask = copied["benign"][0]
    mask.unlink()
    data = prepare(config(tmp_path, busi_task(root, "busi_cls", "multiclass", "class")), progress=False)
    assert len(data.source_of("busi_cls")) == 9
    assert skipped_of(data, "busi_cls") == {str(image): "no mask file: kept for its class, unlabelled for mask, box "
                                                        "and lesion characteristics"}


def test_manifest_row_with_a_half_written_box_names_the_row(tmp_path):
    src = shared("brain_tumor_mri")
    images = copy_images(src / "yes", tmp_path / "imgs", 3)
    rows = [[f"imgs/{p.name}", "yes", 1, 1, 5, 5] for p in images]
    rows[2][4] = ""
    csv_path = write_manifest(tmp_path / "boxes.csv", ["image", "label", "x0", "y0", "x1", "y1"], rows)
    task = manifest_task(csv_path, box_columns=["x0", "y0", "x1", "y1"])
    with pytest.raises(DataError, match=r"boxes\.csv: row 4: box columns \['x0', 'y0', 'x1', 'y1'\] are partly "
                                        r"empty \(\['1', '1', '', '5'\]\)"):
        prepare(config(tmp_path, task), progress=False)


def test_busi_copy_reads_when_intact(tmp_path):
    root = tmp_path / "busi"
    copy_busi(root)
    data = prepare(config(tmp_path, busi_task(root), busi_task(root, "busi_cls", "multiclass", "class")),
                   progress=False)
    assert len(data.source_of("busi_seg")) == 9 and data.source_of("busi_seg").skipped == []
    assert inspect(data)["tasks"]["busi_cls"]["images"] == 9


def mask_manifest(tmp_path: Path, n: int = 6) -> tuple[Path, list[tuple[Path, Path]]]:
    """A generic manifest (image, mask, label) over copies of BUSI benign/malignant pairs."""
    pairs = busi_pairs(n // 2)
    folder = tmp_path / "seg"
    folder.mkdir()
    rows, copied = [], []
    for cls in ("benign", "malignant"):
        for img, mask in pairs[cls]:
            ci, cm = Path(shutil.copy2(img, folder / img.name)), Path(shutil.copy2(mask, folder / mask.name))
            copied.append((ci, cm))
            rows.append([f"seg/{ci.name}", f"seg/{cm.name}", "yes" if cls == "malignant" else "no"])
    return write_manifest(tmp_path / "seg.csv", ["image", "mask", "label"], rows), copied


def seg_manifest_task(csv_path: Path) -> dict:
    t = manifest_task(csv_path, mask_column="mask")
    t.update(name="seg", kind="segmentation", target="mask", classes=None)
    return t


def test_manifest_mask_size_mismatch_names_mask_and_image(tmp_path):
    csv_path, copied = mask_manifest(tmp_path)
    image, mask = copied[2]
    resize_file(mask, extra=-5)
    with pytest.raises(DataError, match=rf"mask {re.escape(str(mask))} is .*its image {re.escape(str(image))} is"):
        prepare(config(tmp_path, seg_manifest_task(csv_path)), progress=False)


# -- (4) a CSV referencing missing files ------------------------------------------------------------
def test_manifest_missing_files_lists_first_ten_of_twelve(tmp_path):
    src = shared("brain_tumor_mri")
    present = copy_images(src / "yes", tmp_path / "imgs", 3)
    rows = [[f"imgs/{p.name}", "yes"] for p in present]
    rows += [[f"imgs/gone_{k:02d}.jpg", "no"] for k in range(12)]
    csv_path = write_manifest(tmp_path / "labels.csv", ["image", "label"], rows)
    with pytest.raises(DataError, match=rf"{re.escape(str(csv_path))}: 12 referenced files are missing; the first 10:") as info:
        prepare(config(tmp_path, manifest_task(csv_path)), progress=False)
    listed = re.findall(r"row (\d+): (\S+)", str(info.value))
    assert [int(r) for r, _ in listed] == list(range(5, 15))  # header is line 1, 3 present rows first
    assert [Path(p).name for _, p in listed] == [f"gone_{k:02d}.jpg" for k in range(10)]
    assert "gone_10" not in str(info.value) and "gone_11" not in str(info.value)


def test_manifest_missing_mask_is_listed(tmp_path):
    csv_path, copied = mask_manifest(tmp_path, n=4)
    copied[1][1].unlink()
    with pytest.raises(DataError, match=rf"1 referenced files are missing; the first 1:\n  row 3: {re.escape(str(copied[1][1]))}"):
        prepare(config(tmp_path, seg_manifest_task(csv_path)), progress=False)


# -- (5) a corrupt mask --------------------------------------------------------------------------
def test_manifest_corrupt_mask_skips_the_record(tmp_path):
    csv_path, copied = mask_manifest(tmp_path)
    image, mask = copied[4]
    mask.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    data = prepare(config(tmp_path, seg_manifest_task(csv_path)), progress=False)
    skipped = skipped_of(data, "seg")
    assert list(skipped) == [str(mask)]
    assert skipped[str(mask)].startswith("unreadable mask") and str(image) in skipped[str(mask)]
    src = data.source_of("seg")
    assert len(src) == 5 and str(image) not in {r.source.describe() for r in src.cached.records}
    assert inspect(data)["tasks"]["seg"]["images"] == 5


def test_busi_corrupt_mask_and_image_are_skipped(tmp_path):
    root = tmp_path / "busi"
    copied = copy_busi(root)
    img_b, mask_b = copied["benign"][0]
    mask_b.write_bytes(b"not a png at all")
    img_m, _ = copied["malignant"][2]
    img_m.write_bytes(img_m.read_bytes()[:60])  # header intact, pixels cut: fails when decoded
    img_n, _ = copied["normal"][1]
    img_n.write_text("not an image")                # fails when the reader measures it
    data = prepare(config(tmp_path, busi_task(root), busi_task(root, "busi_cls", "multiclass", "class")),
                   progress=False)
    skipped = skipped_of(data, "busi_seg")
    assert set(skipped) == {str(mask_b), str(img_m), str(img_n)}
    assert skipped[str(mask_b)].startswith("unreadable mask") and str(img_b) in skipped[str(mask_b)]
    assert skipped[str(img_m)].startswith("unreadable image")
    assert skipped[str(img_n)].startswith("unreadable image")
    ids = {r.source.describe() for r in data.source_of("busi_seg").cached.records}
    assert not {str(img_b), str(img_m), str(img_n)} & ids and len(ids) == 6
    report = inspect(data)["tasks"]
    assert report["busi_cls"]["images"] == 6 and len(report["busi_cls"]["skipped"]) == 3


# -- (6) mini-MIAS: a film listed in Info.txt without its file -------------------------------------
def mias_copy(tmp_path: Path, films: int = 12) -> Path:
    src = shared("mini_mias")
    dst = tmp_path / "mias"
    dst.mkdir()
    keep = {f"mdb{k:03d}" for k in range(1, films + 1)}
    lines = [line for line in (src / "Info.txt").read_text(errors="replace").splitlines()
             if not line.strip().startswith("mdb") or line.split()[0] in keep]
    (dst / "Info.txt").write_text("\n".join(lines) + "\n")  # header text kept, rows cut to `films`
    for film in sorted(keep):
        shutil.copy2(src / f"{film}.pgm", dst / f"{film}.pgm")
    return dst


def mias_task(root: Path) -> dict:
    return {"name": "mias_severity", "kind": "multiclass", "classes": ["normal", "benign", "malignant"],
            "target": "severity", "reader": {"name": "mias", "root": str(root)},
            "image": {"size": 32, "mode": "L"}}


def test_mias_missing_film_is_skipped_and_counted(tmp_path):
    root = mias_copy(tmp_path)
    (root / "mdb005.pgm").unlink()
    (root / "mdb008.pgm").write_bytes(b"P5\n")  # a PGM header cut short
    result = MIASReader(root=root).read()
    reasons = {s.path: s.reason for s in result.skipped}
    assert re.fullmatch(r"listed in Info\.txt line \d+ but the file is missing", reasons[str(root / "mdb005.pgm")])
    assert reasons[str(root / "mdb008.pgm")].startswith("unreadable image")
    assert len(result.records) == 10
    data = prepare(config(tmp_path, mias_task(root)), progress=False)
    assert set(skipped_of(data, "mias_severity")) == {str(root / "mdb005.pgm"), str(root / "mdb008.pgm")}
    report = inspect(data)["tasks"]["mias_severity"]
    assert report["images"] == 10 and len(report["skipped"]) == 2


# -- (7) MedMNIST npz ----------------------------------------------------------------------------
def medmnist_copy(tmp_path: Path, n: int = 12, drop: str | None = None, edit=None) -> Path:
    """The first ``n`` rows of each split of the shared breastmnist.npz, optionally broken."""
    src = shared("medmnist/breastmnist.npz")
    with np.load(src) as data:
        arrays = {k: np.asarray(data[k])[:n] for k in data.files}
    if edit:
        edit(arrays)
    arrays.pop(drop, None)
    path = tmp_path / "breastmnist.npz"
    np.savez(path, **arrays)
    return path


def medmnist_task(path: Path) -> dict:
    return {"name": "breastmnist", "kind": "binary", "classes": ["malignant", "normal_or_benign"],
            "target": "label", "reader": {"name": "medmnist", "path": str(path)},
            "image": {"size": 28, "mode": "L"}, "split": {"method": "official"}}


def test_medmnist_copy_reads(tmp_path):
    data = prepare(config(tmp_path, medmnist_task(medmnist_copy(tmp_path))), progress=False)
    assert inspect(data)["tasks"]["breastmnist"]["images"] == 36


@pytest.mark.parametrize("key", ["val_labels", "test_images"])
def test_medmnist_missing_key_names_it(tmp_path, key):
    path = medmnist_copy(tmp_path, drop=key)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: missing key {key} \(found \["):
        prepare(config(tmp_path, medmnist_task(path)), progress=False)


def test_medmnist_label_outside_classes(tmp_path):
    def bad_label(arrays):
        labels = arrays["train_labels"].copy()
        labels[3] = 7
        arrays["train_labels"] = labels

    path = medmnist_copy(tmp_path, edit=bad_label)
    with pytest.raises(DataError, match=rf"label 7 of {re.escape(str(path))}\[train_images\]\[3\] .*declared classes"):
        prepare(config(tmp_path, medmnist_task(path)), progress=False)


def test_medmnist_row_count_mismatch(tmp_path):
    def cut(arrays):
        arrays["test_labels"] = arrays["test_labels"][:-2]

    path = medmnist_copy(tmp_path, edit=cut)
    with pytest.raises(DataError, match=r"test_images has 12 rows but test_labels has 10"):
        prepare(config(tmp_path, medmnist_task(path)), progress=False)


def test_medmnist_truncated_npz(tmp_path):
    path = medmnist_copy(tmp_path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: not a readable \.npz file"):
        prepare(config(tmp_path, medmnist_task(path)), progress=False)


def test_cli_medmnist_missing_key_has_no_traceback(tmp_path):
    path = medmnist_copy(tmp_path, drop="train_labels")
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(experiment(tmp_path, medmnist_task(path))))
    result = CliRunner().invoke(app, ["data", "inspect", str(cfg_path), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {path}: missing key train_labels")
    assert "Traceback" not in result.output
