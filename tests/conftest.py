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


def chance_level(y, scores, *, alpha: float = 0.01, n_perm: int = 2000, seed: int = 0) -> float:
    """The AUC that a model which learned nothing stays below with probability 1 - ``alpha`` on these
    cases: the (1 - alpha) quantile of the AUC over ``n_perm`` permutations of the labels ``y``."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y = np.asarray(y)
    return float(np.quantile([roc_auc_score(rng.permutation(y), scores) for _ in range(n_perm)], 1 - alpha))


def assert_beats_chance(pred, arm: str, task: str, positive: str):
    """The test AUC of ``arm`` on ``task`` for class ``positive`` against the rest (per group when
    images share one) lies above what 99% of
    label permutations reach, and the same scores against the labels shuffled once do not: the check
    separates a trained model from a random one (issue 12, item 8)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    rows = pred[(pred.arm == arm) & (pred.task == task) & (pred.split == "test")].dropna(axis=1, how="all")
    assert len(rows), (arm, task)
    column = f"score_{positive}"
    index = [c for c in rows.columns if c.startswith("score_")].index(column)   # score columns in class order
    rows = rows.assign(y=(rows["y_true"] == index).astype(int))
    if rows["group"].duplicated().any():
        rows = rows.groupby("group", as_index=False).agg({"y": "max", column: "mean"})
    y, s = rows["y"].to_numpy(), rows[column].to_numpy()
    auc, level = roc_auc_score(y, s), chance_level(y, s)
    print(f"chance check: {arm} on {task}: AUC {auc:.3f}, chance level {level:.3f}, {len(y)} cases")
    assert auc > level, f"{arm} on {task}: test AUC {auc:.3f} is within chance (99% of permutations reach {level:.3f})"
    # the same scores against shuffled labels (a model that learned nothing) pass about 1 time in 100
    rng = np.random.default_rng(1)
    passed = sum(roc_auc_score(rng.permutation(y), s) > level for _ in range(200))
    assert passed <= 10, f"the check passes {passed} of 200 label shufflings: it would pass a random model"
    return auc, level
