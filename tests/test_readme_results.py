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
