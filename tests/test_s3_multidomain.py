"""Study s3 (issue 5): mini-MIAS lesion crops, task class subsets, and the whole study in small."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import DATA, REPO, assert_beats_chance, need_data

MIAS = DATA / "mini_mias"


@pytest.fixture(scope="module")
def lesions():
    from medmtl.data.readers.mias import MIASReader

    need_data("mini_mias")
    return MIASReader(root=MIAS, crop="lesion").read()


def _pgm(film: str) -> np.ndarray:
    from PIL import Image

    with Image.open(MIAS / f"{film}.pgm") as img:
        return np.asarray(img.convert("L"))


def test_lesion_crop_is_centred_on_the_circle(lesions):
    """mdb001 (CIRC B 535 425 197): the README's rule (row = 1024 - y, scale by 256/1024) puts the
    centre at x 133.75, row 149.75; the crop is the square around it, the pixels the PGM's own."""
    rec = next(r for r in lesions.records if r.id.startswith("mdb001/"))
    film = _pgm("mdb001")
    s = film.shape[1] / 1024
    cx, cy = 535 * s, (1024 - 425) * s
    x0, y0, x1, y1 = rec.source.crop
    assert x1 - x0 == y1 - y0 == round(2 * 197 * 1.5 * s)          # side = diameter x (1 + margin)
    assert abs((x0 + x1) / 2 - cx) <= 0.5 and abs((y0 + y1) / 2 - cy) <= 0.5
    assert np.array_equal(rec.source.load(), film[y0:y1, x0:x1])
    assert rec.labels == {"severity": "benign", "malignant": "no", "tissue": "G", "abnormality": "CIRC"}


def test_lesion_crop_near_the_border_is_padded_not_shifted(lesions):
    """mdb144 has a benign and a malignant lesion: two records of one patient (film pair); the
    benign one (233 994 29) lies 30 px of 1024 from the top, so its crop reaches past the border."""
    recs = {r.id: r for r in lesions.records if r.id.startswith("mdb144/")}
    assert sorted(r.labels["severity"] for r in recs.values()) == ["benign", "malignant"]
    assert {r.group for r in recs.values()} == {"pair072"}
    benign = next(r for r in recs.values() if r.labels["severity"] == "benign")
    x0, y0, x1, y1 = benign.source.crop
    assert y0 < 0 and x1 - x0 == y1 - y0 == 32                    # min_size: small circles keep context
    crop = benign.source.load()
    assert crop.shape == (32, 32) and not crop[:-y0].any()         # rows above the film are zeros
    assert np.array_equal(crop[-y0:], _pgm("mdb144")[:y1, x0:x1])


def test_lesion_rows_without_coordinates_are_skipped_and_listed(lesions):
    note3 = {s.path.rsplit("/", 1)[-1]: s.reason for s in lesions.skipped}
    assert set(note3) == {"mdb059.pgm", "mdb216.pgm", "mdb233.pgm", "mdb245.pgm"}
    assert all("NOTE 3" in r and "Info.txt line" in r for r in note3.values())
    assert len(lesions.records) == 119                              # every located lesion row, no normal film
    assert {r.labels["severity"] for r in lesions.records} == {"benign", "malignant"}
    assert lesions.targets["severity"].classes == ("benign", "malignant")
    assert all(r.group.startswith("pair") for r in lesions.records)


def test_crop_and_whole_film_never_share_a_cache_slot(tmp_path, lesions):
    from medmtl.data.cache import DecodeCache
    from medmtl.data.records import FileSource, Record

    rec = next(r for r in lesions.records if r.id.startswith("mdb001/"))
    whole = Record(id="mdb001", source=FileSource(rec.source.path))
    cache = DecodeCache(tmp_path, size=48, mode="L")
    first = cache.load([whole, rec], progress=False)
    assert first.keys[0] != first.keys[1] and first.slots[0] != first.slots[1]
    again = DecodeCache(tmp_path, size=48, mode="L").load([rec], progress=False)   # warm: the crop, not the film
    assert again.decoded == 0 and np.array_equal(again.image(0), first.image(1))


def test_unlisted_classes_are_dropped_only_when_asked():
    """BUSI benign vs malignant: normal images have no label for the task (masked), or are an error."""
    from medmtl.config.schema import TaskConfig
    from medmtl.data.pipeline import TaskSpec, encode_labels
    from medmtl.data.records import FileSource, Record
    from medmtl.errors import DataError

    recs = [Record(id=c, source=FileSource(REPO / f"{c}.png"), labels={"class": c})
            for c in ("benign", "normal", "malignant")]
    spec = TaskSpec("busi", "binary", ("benign", "malignant"), "class", "src", unlisted="drop")
    assert encode_labels(spec, recs, "src").tolist() == [0, -1, 1]
    spec.unlisted = "error"
    with pytest.raises(DataError, match="label 'normal' .* is not one of the declared classes"):
        encode_labels(spec, recs, "src")
    with pytest.raises(ValueError, match="unlisted: drop needs classes"):
        TaskConfig(name="busi", kind="binary", target="class", unlisted="drop",
                   reader={"name": "mias", "root": str(MIAS)})


def _tiny_s3(tmp_path, cache):
    """experiments/s3-multidomain.yaml with every size and count cut down (the study's structure kept)."""
    from medmtl.config import load_config, parse_config

    for name in ("busi", "mini_mias", "medmnist"):
        need_data(name)
    raw = load_config(REPO / "experiments" / "s3-multidomain.yaml").model_dump(mode="json")
    raw.update(cache_dir=str(cache), run_dir=str(tmp_path / "s3"), profiles={})
    for t in raw["tasks"]:
        t["image"]["size"] = min(t["image"]["size"], 32)
    raw["data"].update(size=32, batch_size=16, limit_train=200, limit_eval=48)
    raw["train"].update(epochs=2, steps_per_epoch=15)
    exp = raw["experiment"]
    exp["cv"].update(n_splits=2, candidates=1)
    exp["tta"] = False        # 8x the test forward passes; TTA itself is tested by tests/test_experiment.py
    exp["arms"][2]["freeze"] = [3]
    return parse_config(raw)


def test_s3_end_to_end_small(tmp_path, shared_cache, monkeypatch):
    import torch

    from medmtl.protocols import run_experiment
    from medmtl.reports import write_report

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # on a busy 2-core runner two threads spin against each other: 2.7x slower
    try:
        out = run_experiment(_tiny_s3(tmp_path, shared_cache), progress=False)
        # a smaller t-SNE sample than the report's default 300 (5 stages, each a t-SNE): the same code runs
        write_report(out, max_images=80, n_boot=200)
    finally:
        torch.set_num_threads(threads)
    pred = pd.read_csv(out / "results/predictions.csv", dtype={"id": str, "group": str})
    test = pred[(pred.split == "test") & (pred.arm == "stl")]
    assert set(pred.task) == {"busi"} and set(test.fold) == {0, 1}
    assert test.id.is_unique and len(test) == 647 and not test.id.str.startswith("normal/").any()
    assert set(pred.arm) == {"mtl", "stl", "freeze/freeze=3"}
    for arm in ("mtl", "stl"):
        assert_beats_chance(pred, arm, "busi", "malignant")        # per lesion: its images share a group

    metrics = json.loads((out / "results/metrics.json").read_text())
    busi = metrics["mtl"]["0"]["busi"]["test"]
    assert 0.0 <= busi["auc"] <= 1.0 and 0.0 <= busi["auc_image"] <= 1.0   # lesion (group) and image level

    results = json.loads((out / "report/results.json").read_text())
    stl = next(r for r in results["rows"] if r["arm"] == "stl" and r["task"] == "busi")
    assert stl["metrics"]["auc"]["p_method"].startswith("DeLong")        # single vs multi (mtl is the first arm)
    assert 0.0 <= stl["metrics"]["auc"]["p_value"] <= 1.0
    ref = results["sections"]["reference"]["table"]
    assert {(r["arm"], r["published"]) for r in ref} == {("mtl", 0.82), ("stl", 0.78)}
    assert all(np.isfinite(r["ours (mean)"]) for r in ref)
    md = (out / "report/results.md").read_text()
    assert "Reference values" in md and "0.82" in md
    data = json.loads((out / "results/data.json").read_text())
    assert data["busi"]["cross_duplicates"]["breastmnist"] > 600                 # BreastMNIST = BUSI copies
    assert data["breastmnist"]["cross_duplicates"]["busi"] > 600
    # one data row per fold (splits differ by fold): each BUSI image is tested in exactly one of them
    folds = data["busi"]["folds"]
    assert len(folds) == 2 and sum(sum(f["splits"]["test"].values()) for f in folds) == 647
    assert "Data and cross-dataset leakage guard" in md and "| busi, fold 2 |" in md
    html = (out / "report/report.html").read_text()
    assert "coloured by domain" in html and "ROC: busi, image level" in html
    assert "Training curves: freeze/freeze=3" in html          # a sweep's models get their own curves
