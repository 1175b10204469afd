"""Study s1 (Fang et al. 2019 on shared data): BUSI lesion characteristics, binarisation at the
training median, the mini-MIAS malignant target, and the study config end to end (tiny settings)."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from medmtl.errors import ConfigError
from tests.conftest import DATA, REPO, assert_beats_chance, need_data

CONFIG = REPO / "experiments" / "s1-aux-tasks.yaml"


@pytest.fixture(scope="module")
def busi_records():
    from medmtl.data.readers.busi import BUSIReader

    return BUSIReader(root=need_data("busi")).read().records


# -- BUSI lesion characteristics ---------------------------------------------------------------
def test_characteristics_of_known_shapes():
    from medmtl.data.readers.busi import lesion_characteristics

    yy, xx = np.mgrid[:100, :100]
    disc = (yy - 50) ** 2 + (xx - 50) ** 2 <= 20 ** 2
    c = lesion_characteristics(disc)
    assert c["lesion_size"] == pytest.approx(disc.sum() / 1e4)
    assert 0.9 < c["circularity"] <= 1.1 and c["taller_than_wide"] == pytest.approx(1.0)
    rect = np.zeros((100, 100), bool)
    rect[10:50, 10:30] = True                       # 40 tall, 20 wide
    rect[80:82, 80:82] = True                       # a speck: the largest component is the lesion
    c = lesion_characteristics(rect)
    assert c["taller_than_wide"] == pytest.approx(2.0) and c["lesion_size"] == pytest.approx(800 / 1e4)
    assert c["circularity"] < lesion_characteristics(disc)["circularity"]
    assert lesion_characteristics(np.zeros((10, 10), bool)) is None


def test_characteristics_on_real_busi_masks(busi_records):
    by_class = {}
    for r in busi_records:
        by_class.setdefault(r.labels["class"], []).append(r)
    # normal images have empty masks: no value, so the label stays missing
    assert not any("circularity" in r.labels for r in by_class["normal"])
    assert all({"lesion_size", "circularity", "taller_than_wide"} <= set(r.labels)
               for cls in ("benign", "malignant") for r in by_class[cls])

    def values(cls, key):
        return np.array([r.labels[key] for r in by_class[cls]])

    # measured on the shared copy: circularity 0.77 (benign) vs 0.58 (malignant) on average; malignant
    # lesions are larger (0.15 vs 0.07 of the image) and more often taller than wide (11% vs 2%)
    assert values("benign", "circularity").mean() > values("malignant", "circularity").mean() + 0.1
    assert values("malignant", "lesion_size").mean() > values("benign", "lesion_size").mean()
    assert (values("malignant", "taller_than_wide") > 1).mean() > 3 * (values("benign", "taller_than_wide") > 1).mean()
    assert all(0 < v < 1 for cls in ("benign", "malignant") for v in values(cls, "lesion_size"))


# -- binarisation at the training median --------------------------------------------------------
def _busi_config(tmp_path, cache, **size_task):
    from medmtl.config import parse_config

    busi = {"kind": "binary", "domain": "ultrasound", "group_key": "image",
            "reader": {"name": "busi", "root": str(need_data("busi"))}, "image": {"size": 32, "mode": "L"},
            "split": {"method": "holdout", "fractions": [0.6, 0.1, 0.3], "seed": 0}}
    tasks = [{**busi, "name": "busi_malignant", "classes": ["benign", "malignant"], "unlisted": "drop",
              "target": "class"},
             {**busi, "name": "busi_size", "target": "lesion_size", "binarize": "median", "role": "auxiliary",
              **size_task}]
    return parse_config({"name": "s1_binarize", "cache_dir": str(cache), "run_dir": str(tmp_path / "run"),
                         "tasks": tasks})


def test_binarize_uses_only_training_values(tmp_path, shared_cache, monkeypatch):
    from medmtl.data.pipeline import prepare
    from medmtl.data.readers.busi import BUSIReader

    cfg = _busi_config(tmp_path, shared_cache)
    data = prepare(cfg, progress=False)
    spec, src = data.tasks["busi_size"], data.source_of("busi_size")
    values = {r.id: r.labels.get("lesion_size") for r in src.cached.records}
    train = [values[i] for i, s in zip(src.ids, src.split) if s == "train" and values[i] is not None]
    assert spec.classes == ("low", "high") and spec.threshold == pytest.approx(np.median(train))
    assert json.loads((tmp_path / "run/splits/thresholds.json").read_text())["busi_size"]["threshold"] == spec.threshold
    labels = data.labels["busi_size"]
    assert set(labels[src.split == "train"]) == {-1, 0, 1}              # normal images: missing
    assert np.array_equal(labels >= 0, np.array([v is not None for v in values.values()]))
    assert data.labels["busi_malignant"][[r.labels["class"] == "normal" for r in src.cached.records]].max() == -1

    # every test lesion made huge: the cut and the training/validation labels do not move
    test_ids = {i for i, s in zip(src.ids, src.split) if s == "test"}
    read = BUSIReader.read

    def inflated(self):
        result = read(self)
        for r in result.records:
            if r.id in test_ids and "lesion_size" in r.labels:
                r.labels["lesion_size"] = 0.99
        return result

    monkeypatch.setattr(BUSIReader, "read", inflated)
    again = prepare(cfg, progress=False)     # the split file of the first run is reused
    src2 = again.source_of("busi_size")
    assert list(src2.split) == list(src.split)
    assert again.tasks["busi_size"].threshold == spec.threshold
    new = again.labels["busi_size"]
    keep = src.split != "test"
    assert np.array_equal(new[keep], labels[keep])
    assert set(new[(src.split == "test") & (new >= 0)]) == {1}


def test_binarize_errors_name_the_task(tmp_path, shared_cache):
    from medmtl.data.pipeline import resolve_task

    info = {"class": _info("multiclass", ("benign", "malignant", "normal")), "lesion_size": _info("continuous")}
    cfg = _busi_config(tmp_path, shared_cache)
    size = cfg.task("busi_size")
    with pytest.raises(ConfigError, match=r"tasks\[1\] \(busi_size\).target='lesion_size' is a continuous value.*"
                                          "add binarize: median"):
        resolve_task(size.model_copy(update={"binarize": None}), info, "busi", "tasks[1]")
    with pytest.raises(ConfigError, match=r"tasks\[0\] \(busi_malignant\).binarize='median': target 'class' .* "
                                          "not numeric"):
        resolve_task(cfg.task("busi_malignant").model_copy(update={"binarize": "median"}), info, "busi", "tasks[0]")
    with pytest.raises(ConfigError, match=r"tasks\[1\]: task 'busi_size': binarize='median' makes a binary task"):
        _busi_config(tmp_path, shared_cache, kind="multiclass")


def _info(kind, classes=None):
    from medmtl.data.records import TargetInfo

    return TargetInfo(kind, classes)


# -- mini-MIAS malignant vs not ---------------------------------------------------------------------
def test_mias_malignant_target():
    from medmtl.data.readers.mias import MIASReader

    result = MIASReader(root=need_data("mini_mias")).read()
    assert result.targets["malignant"].kind == "binary" and result.targets["malignant"].classes == ("no", "yes")
    by_id = {r.id: r.labels for r in result.records}
    assert by_id["mdb144"]["malignant"] == "yes"          # one benign and one malignant lesion row
    assert all((lab["malignant"] == "yes") == (lab["severity"] == "malignant") for lab in by_id.values())
    assert by_id["mdb001"]["severity"] == "benign" and by_id["mdb001"]["malignant"] == "no"
    assert sum(lab["malignant"] == "yes" for lab in by_id.values()) == 52


# -- the study config, end to end --------------------------------------------------------------------
def test_s1_config_end_to_end(tmp_path, shared_cache, monkeypatch):
    """Both applications x four arms, one tiny epoch each: results, the reference table and the
    Spearman table of the auxiliary tasks."""
    from medmtl.config import load_config
    from medmtl.protocols import run_experiment
    from medmtl.reports import write_report

    need_data("busi"), need_data("mini_mias")
    monkeypatch.setenv("MEDMTL_DATA", os.environ.get("MEDMTL_DATA", str(DATA)))
    tiny = {"experiment.seeds": [0], "data.size": 32, "data.batch_size": 16, "train.epochs": 1,
            "train.steps_per_epoch": 20, "data.limit_eval": 16}
    cfg = load_config(CONFIG, overrides={"cache_dir": str(shared_cache), "run_dir": str(tmp_path / "s1"),
                                         "profiles": {"quick": tiny}})
    out = run_experiment(cfg, quick=True, progress=False)
    write_report(out, tsne=False, gradcam=False, n_boot=20)   # the figures have their own tests

    metrics = json.loads((out / "results/metrics.json").read_text())
    arms = ["mtl_tl", "mtl_ri", "stl_tl", "stl_ri"]
    assert sorted(metrics) == sorted(arms)
    for arm in arms:
        for task in ("mias_malignant", "busi_malignant"):
            test = metrics[arm]["0"][task]["test"]
            assert {"auc", "accuracy", "sensitivity", "specificity"} <= set(test) and 0 <= test["auc"] <= 1
    pred = pd.read_csv(out / "results/predictions.csv", dtype={"id": str, "group": str})
    for arm in ("mtl_tl", "stl_tl"):
        assert_beats_chance(pred, arm, "busi_malignant", "malignant")
    # the MTL arms used the spearman weighting over the application's tasks; STL arms did not
    w = json.loads((out / "applications/busi/arms/mtl_tl/seed0/weighting.json").read_text())
    assert w["main"] == "busi_malignant" and w["kwargs"]["m"] == 0.7
    assert set(w["report"]) == {"busi_size", "busi_circularity", "busi_taller_than_wide"}
    assert not (out / "applications/busi/arms/stl_tl/seed0/weighting.json").exists()

    doc = json.loads((out / "report/results.json").read_text())
    ref = doc["sections"]["reference"]["table"]
    assert [r["published"] for r in ref] == [0.793, 0.735, 0.912, 0.794]
    assert all(0 <= r["ours (mean)"] <= 1 for r in ref)
    spear = {(r["application"], r["auxiliary task"]): r for r in doc["sections"]["spearman"]["table"]}
    assert set(spear) == {("mias", "mias_tissue"), ("mias", "mias_abnormality"), ("busi", "busi_size"),
                          ("busi", "busi_circularity"), ("busi", "busi_taller_than_wide")}
    for r in spear.values():
        assert r["kept (p < alpha)"] == ("kept" if r["p"] < 0.05 else "dropped")
        assert r["weight |r|"] == (pytest.approx(abs(r["Spearman r"])) if r["p"] < 0.05 else 0.0)
        assert set(r["runs"].split(", ")) == {"mtl_tl/seed0", "mtl_ri/seed0"}    # one row for both MTL arms
    # measured on the shared data: circularity is strongly (negatively) tied to malignancy
    assert spear[("busi", "busi_circularity")]["kept (p < alpha)"] == "kept"
    assert spear[("busi", "busi_circularity")]["Spearman r"] < -0.3
    assert 0 < spear[("busi", "busi_size")]["binarised at (training median)"] < 1
    md = (out / "report/results.md").read_text()
    assert "Reference values: ours vs published" in md and "Auxiliary tasks: Spearman correlation" in md
