"""Profiles: named override blocks (``quick``, ``standard``) applied by ``medmtl run --profile``."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medmtl.cli import app
from medmtl.config import load_config, save_config
from medmtl.config.loader import parse_config
from medmtl.errors import ConfigError
from medmtl.protocols import apply_profile, check_config, comparison, run_experiment
from tests.test_names import base

REPO = Path(__file__).resolve().parents[1]
STUDIES = ["s0-mtl-vs-tl", "s1-aux-tasks", "s2-pretrain-pool", "s3-multidomain", "s4-cls-det-seg"]


@pytest.fixture
def ds(tmp_path):
    for c in ("no", "yes"):
        (tmp_path / "ds" / c).mkdir(parents=True, exist_ok=True)
    return tmp_path / "ds"


def test_a_quick_block_is_the_quick_profile_and_cannot_be_given_twice(tmp_path, ds):
    raw = base(tmp_path, ds)
    raw["quick"] = {"train.epochs": 1}
    cfg = parse_config(raw)
    assert cfg.profiles == {"quick": {"train.epochs": 1}} and cfg.profile is None
    raw["profiles"] = {"quick": {"train.epochs": 2}}
    with pytest.raises(ConfigError, match="both a 'quick' block and profiles.quick"):
        parse_config(raw)


def test_apply_profile_sets_its_overrides_name_and_own_run_dir(tmp_path, ds):
    raw = base(tmp_path, ds)
    raw.pop("run_dir", None)
    raw["name"] = "study"
    raw["profiles"] = {"quick": {"train.epochs": 1}, "standard": {"train.epochs": 7, "run_dir": str(tmp_path / "x")}}
    cfg = parse_config(raw)
    assert Path(cfg.run_dir) == Path("runs/study")
    quick = apply_profile(cfg, "quick")
    assert quick.train.epochs == 1 and quick.profile == "quick"
    # a profile's models never land in the dir of the config as written (or of another profile)
    assert Path(quick.run_dir) == Path("runs/study-quick")
    standard = apply_profile(cfg, "standard")
    assert standard.train.epochs == 7 and Path(standard.run_dir) == tmp_path / "x"
    with pytest.raises(ConfigError, match=r"no profile 'standart'; its profiles: \['quick', 'standard'\].*"
                                          r"did you mean 'standard'"):
        apply_profile(cfg, "standart")
    with pytest.raises(ConfigError, match="already had profile 'quick' applied"):
        apply_profile(quick, "standard")
    # an explicit run_dir of the config is kept by a profile that does not set one
    raw["run_dir"] = str(tmp_path / "mine")
    assert Path(apply_profile(parse_config(raw), "quick").run_dir) == tmp_path / "mine"


def test_a_run_dir_of_another_profile_is_refused_before_any_data(tmp_path, ds, monkeypatch):
    raw = base(tmp_path, ds)
    raw["run_dir"] = str(tmp_path / "run")
    raw["profiles"] = {"quick": {"train.epochs": 1}, "standard": {"train.epochs": 3}}
    cfg = parse_config(raw)
    save_config(apply_profile(cfg, "quick"), tmp_path / "run")          # a quick run was here
    monkeypatch.setattr(comparison, "prepare", lambda *a, **k: pytest.fail("data prepared before the check"))
    with pytest.raises(ConfigError, match=r"holds a run with profile 'quick', and this run has profile 'standard'"):
        run_experiment(cfg, profile="standard", progress=False)
    with pytest.raises(ConfigError, match=r"holds a run with profile 'quick', and this run has profile None"):
        run_experiment(cfg, progress=False)
    with pytest.raises(ConfigError, match="quick=True and profile='standard' ask for two profiles"):
        run_experiment(cfg, profile="standard", quick=True, progress=False)
    # a run dir saved before profiles existed may hold a quick run: refused, never taken as this run's
    legacy = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    legacy.pop("profile")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(legacy))
    with pytest.raises(ConfigError, match="saved before profiles existed"):
        run_experiment(cfg, progress=False)
    # the run dir's own config, run again with its own profile, is the same run
    assert apply_profile(apply_profile(cfg, "quick"), "quick").profile == "quick"


def test_cli_profile_and_quick(tmp_path, ds):
    raw = base(tmp_path, ds)
    raw["profiles"] = {"quick": {"train.epochs": 1}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(path), "--profile", "standard", "--no-progress"])
    assert result.exit_code != 0 and "no profile 'standard'; its profiles: ['quick']" in result.output
    result = CliRunner().invoke(app, ["run", str(path), "--profile", "standard", "--quick", "--no-progress"])
    assert result.exit_code != 0 and "ask for two profiles" in result.output


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_has_a_quick_and_a_standard_profile_that_check(study):
    cfg = load_config(REPO / "experiments" / f"{study}.yaml")
    assert {"quick", "standard"} <= set(cfg.profiles)
    for name in ("quick", "standard"):
        applied = check_config(apply_profile(cfg, name))
        assert Path(applied.run_dir) == Path("runs") / f"{cfg.name}-{name}"
    standard = apply_profile(cfg, "standard")
    # the contract for a standard answer: 3 seeds, no subset of any training set
    assert len(standard.experiment.seeds) >= 3
    assert standard.data.limit_train is None and standard.data.limit_eval is None and standard.data.limit_test is None


@pytest.mark.parametrize("config", ["medmnist-v2-resnet18", "medmnist-lite0-64"])
def test_reproduction_configs_check_and_name_their_published_values(config):
    cfg = check_config(load_config(REPO / "experiments" / "reproduce" / f"{config}.yaml"))
    exp = cfg.experiment
    assert exp.seeds == [0, 1, 2] and sorted(exp.applications) == ["breastmnist", "retinamnist"]
    values = exp.reference.values
    assert {v.task for v in values} == {"breastmnist", "retinamnist"}
    assert all(v.arm == exp.arms[0].name and 0.5 < v.published < 1.0 for v in values)
    check_config(apply_profile(cfg, "quick"))
