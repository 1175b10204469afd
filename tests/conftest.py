"""Shared fixtures: the real datasets in ``$MEDMTL_DATA`` (default ../shared/datasets)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDMTL_DATA", REPO.parent / "shared" / "datasets"))


def need_data(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset {path} is not present; set MEDMTL_DATA")
    return path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One decode cache for the whole session (MEDMTL_TEST_CACHE reuses one across sessions)."""
    env = os.environ.get("MEDMTL_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def datasets_config(shared_cache, tmp_path_factory):
    """experiments/datasets.yaml with the session cache and a temporary run dir."""
    from medmtl.config import load_config

    need_data()
    os.environ.setdefault("MEDMTL_DATA", str(DATA))
    return load_config(REPO / "experiments" / "datasets.yaml",
                       overrides={"cache_dir": str(shared_cache), "run_dir": str(tmp_path_factory.mktemp("run"))})


@pytest.fixture(scope="session")
def shared_data(datasets_config):
    """Every shared dataset read, decoded, de-duplicated and split once per session."""
    from medmtl.data.pipeline import prepare

    return prepare(datasets_config, progress=False)
