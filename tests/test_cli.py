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


def test_run_ends_with_the_table_the_verdicts_and_the_report_path(tmp_path, shared_cache, caplog):
    """`medmtl run` without a terminal: one log line per epoch (run, epoch, losses, validation, time),
    then each arm's test AUC, each comparison's verdict and the path of report.html."""
    import logging

    from tests.test_engine import _cfg

    _, raw = _cfg(tmp_path, shared_cache, epochs=2)
    raw["run_dir"] = str(tmp_path / "exp")
    raw["experiment"] = {"main_task": "breastmnist", "seeds": [0],
                         "arms": [{"name": "mtl", "strategy": "mtl"}, {"name": "stl", "strategy": "stl"}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    # CliRunner's stderr is no terminal; the CLI turns the epoch lines on (their logger only)
    result = CliRunner().invoke(app, ["run", str(path), "--no-progress"])
    assert logging.getLogger("medmtl.engine.epochs").level == logging.INFO
    assert result.exit_code == 0, result.output
    epochs = [r.getMessage() for r in caplog.records if r.name == "medmtl.engine.epochs"]
    assert len(epochs) == 4                                    # 2 arms x 2 epochs
    assert epochs[0].startswith("arms/mtl/seed0 epoch 1/2 (") and "loss breastmnist " in epochs[0]
    assert "val auc/breastmnist " in epochs[0] and "monitor " in epochs[0]
    report = json.loads((tmp_path / "exp" / "report" / "results.json").read_text())
    auc = next(r for r in report["rows"] if r["arm"] == "stl")["metrics"]["auc"]["ref"]
    out = result.output
    assert f"stl  breastmnist  auc {auc:.3f}" in out
    verdict = report["sections"]["comparisons"]["table"][0]["verdict"]
    assert f"mtl vs stl (breastmnist): {verdict}" in out and "not the two methods" in verdict
    assert out.rstrip().endswith(f"report: {tmp_path / 'exp' / 'report' / 'report.html'}")
