"""The README's measured numbers are the stored results files' numbers: each result block is what
``benchmarks/studies.py`` renders from its file, and every stored study file has its block."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("studies", REPO / "benchmarks" / "studies.py")
studies = importlib.util.module_from_spec(spec)
spec.loader.exec_module(studies)
README = (REPO / "README.md").read_text()
BLOCKS = studies.readme_blocks(README)


def test_readme_has_result_blocks():
    assert any(k.startswith("results:") for k in BLOCKS)


@pytest.mark.parametrize("key", sorted(BLOCKS))
def test_readme_block_is_rendered_from_its_stored_file(key):
    kind, name = key.split(":")
    path = studies.RESULTS / f"{name}.json"
    assert path.is_file(), f"README block {key} names {path}, which is not stored"
    assert BLOCKS[key] == studies.RENDERERS[kind](json.loads(path.read_text())), \
        f"README block {key} differs from {path.name}: run `python benchmarks/studies.py readme`"


def test_every_stored_study_result_is_in_the_readme():
    stored = {p.stem for p in studies.RESULTS.glob("*.json") if "profile" in json.loads(p.read_text())}
    assert stored <= {k.split(":")[1] for k in BLOCKS}, "a stored study result is missing from the README"


def test_a_changed_number_is_caught(tmp_path):
    """The check is not vacuous: a stored value changed by 0.001 changes the rendered block."""
    key = next(k for k in sorted(BLOCKS) if k.startswith("results:"))
    doc = json.loads((studies.RESULTS / f"{key.split(':')[1]}.json").read_text())
    auc = doc["report"]["rows"][0]["metrics"]["auc"]
    auc["ref"] += 0.001
    assert studies.render(doc) != BLOCKS[key]


def _fresh_clone():
    spec = importlib.util.spec_from_file_location("fresh_clone", REPO / "benchmarks" / "fresh_clone.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fresh_clone_sees_the_table_and_report_path_only_when_printed(tmp_path):
    """The demo's record says what its output really ended with, parsed from run_summary's own lines."""
    from medmtl.reports.summary import run_summary

    fresh = _fresh_clone()
    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (run / "report" / "results.json").write_text(json.dumps({"seeds": [0], "reference_seed": 0, "rows": [
        {"arm": "stl", "task": "pcam", "kind": "binary", "n_seeds": 1,
         "metrics": {"auc": {"ref": 0.9, "ci_low": 0.88, "ci_high": 0.92}}}]}))
    output = f"INFO epoch 1/4\nresults: {run / 'results'}\n{run_summary(run)}\n"
    seen = fresh._seen("demo", output)
    assert seen == {"table_printed": True, "report_path": str(run / "report" / "report.html")}
    assert fresh._seen("demo", "INFO epoch 1/4\nTraceback (most recent call last):\n") == \
        {"table_printed": False, "report_path": None}
    assert fresh._seen("ci", "..\n===== 751 passed, 3 warnings in 800.12s (0:13:20) =====\n") == \
        {"pytest_summary": "751 passed, 3 warnings in 800.12s (0:13:20)"}
    line = studies.render_fresh({"targets": {"demo": {"seconds": 421.4, "commit": "abc1234", "date": "2026-12-02",
                                                      "machine": "x86_64, 2 CPUs, Linux", **seen}}})
    assert "7 min 1 s" in line and "report.html" in line


def test_the_validation_column_is_the_reference_seeds_validation_value_not_its_test_value():
    doc = json.loads((studies.RESULTS / "medmnist-lite0-64-full.json").read_text())
    row = next(r for r in doc["report"]["rows"] if r["task"] == "breastmnist")
    per_seed = doc["metrics"][row["arm"]]
    ref = str(row["reference_seed"])
    assert studies._validation(doc, row, "auc") == per_seed[ref]["breastmnist"]["val"]["auc"]
    assert studies._validation(doc, row, "auc") != per_seed[ref]["breastmnist"]["test"]["auc"]
    assert len({s["breastmnist"]["val"]["auc"] for s in per_seed.values()}) > 1   # the seed matters
