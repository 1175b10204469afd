"""`medmtl data inspect` on real data: the JSON document the issue specifies, and the text form."""
from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from medmtl.cli import app
from tests.conftest import need_data


def _config(tmp_path, cache):
    need_data("busi")
    cfg = {
        "name": "cli", "cache_dir": str(cache), "run_dir": str(tmp_path / "run"),
        "tasks": [
            {"name": "busi_cls", "kind": "multiclass", "classes": ["benign", "malignant", "normal"],
             "target": "class", "reader": {"name": "busi", "root": "${MEDMTL_DATA}/busi"},
             "image": {"size": 64, "mode": "L"}},
            {"name": "busi_seg", "kind": "segmentation", "target": "mask",
             "reader": {"name": "busi", "root": "${MEDMTL_DATA}/busi"}, "image": {"size": 64, "mode": "L"}},
            {"name": "mias_tissue", "kind": "multiclass", "classes": ["F", "G", "D"], "target": "tissue",
             "reader": {"name": "mias", "root": "${MEDMTL_DATA}/mini_mias"}, "image": {"size": 64, "mode": "L"}},
        ],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_inspect_json_document(tmp_path, shared_cache):
    result = CliRunner().invoke(app, ["data", "inspect", str(_config(tmp_path, shared_cache)), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    tasks = doc["tasks"]
    assert set(tasks) == {"busi_cls", "busi_seg", "mias_tissue"}
    cls = tasks["busi_cls"]
    assert sum(sum(v.values()) for v in cls["splits"].values()) == 780
    assert set(cls["splits"]) == {"train", "val", "test"}
    assert set(tasks["busi_seg"]["splits"]["test"]) == {"images"}
    assert tasks["mias_tissue"]["groups"] == 161 and tasks["mias_tissue"]["skipped"] == []
    assert isinstance(cls["duplicate_groups"], int)
    assert (tmp_path / "run" / "skipped.csv").is_file()


def test_inspect_text(tmp_path, shared_cache):
    result = CliRunner().invoke(app, ["data", "inspect", str(_config(tmp_path, shared_cache))])
    assert result.exit_code == 0, result.output
    assert "busi_cls (multiclass, main): 780 images" in result.stdout
    assert "mias_tissue" in result.stdout and "F=" in result.stdout
