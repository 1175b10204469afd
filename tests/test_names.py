"""Every registered name and option a config holds is checked when the config loads, with its key path,
the allowed names and a close match, before any data is read or any model trained."""
from __future__ import annotations

import re

import pytest
import yaml

import medmtl.protocols.comparison as comparison
from medmtl import api
from medmtl.config import parse_config
from medmtl.errors import ConfigError
from medmtl.protocols import check_config, run_experiment


@pytest.fixture
def ds(tmp_path):
    for c in ("no", "yes"):
        (tmp_path / "ds" / c).mkdir(parents=True, exist_ok=True)
    return tmp_path / "ds"


def base(tmp_path, ds) -> dict:
    """Two tasks and three arms: the last arm is where the mistakes go (the first two would train first)."""
    task = lambda name: {"name": name, "kind": "binary", "target": "class", "classes": ["no", "yes"],  # noqa: E731
                         "reader": {"name": "folder", "root": str(ds)}}
    return {"name": "names", "cache_dir": str(tmp_path / "cache"), "run_dir": str(tmp_path / "run"),
            "tasks": [task("a"), task("b")],
            "experiment": {"main_task": "a", "arms": [{"name": "stl", "strategy": "stl"},
                                                      {"name": "mtl", "strategy": "mtl", "tasks": ["a", "b"]},
                                                      {"name": "ft", "strategy": "finetune", "source_arm": "mtl"}]}}


def refused(raw: dict, pattern: str) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(parse_config(raw))
    message = str(info.value)
    assert re.search(pattern, message), message
    return message


def test_a_valid_config_passes(tmp_path, ds):
    cfg = parse_config(base(tmp_path, ds))
    assert check_config(cfg) is cfg


def test_third_arm_strategy_is_refused_with_its_key_and_a_close_match(tmp_path, ds):
    raw = base(tmp_path, ds)
    raw["experiment"]["arms"][2]["strategy"] = "finetun"
    msg = refused(raw, r"experiment\.arms\[2\]\.strategy: 'finetun' is not a registered strategy; choose one of "
                       r"\['feature_extraction', 'finetune', .*\] \(did you mean 'finetune'\?\)")
    assert msg.startswith("1 invalid setting(s)")


@pytest.mark.parametrize("key, value, pattern", [
    ("train.weighting.name", "uncertanty",
     r"train\.weighting\.name: 'uncertanty' is not a registered weighting.*did you mean 'uncertainty'"),
    ("data.sampler", "balance", r"data\.sampler: 'balance' is not a registered sampler.*did you mean 'balanced'"),
    ("data.augmentation", "s22", r"data\.augmentation: 's22' is not a registered augmentation preset"),
    ("train.optimizer.name", "adamm", r"train\.optimizer\.name: 'adamm' is not a registered optimizer.*'adam'"),
    ("train.scheduler.name", "cosin", r"train\.scheduler\.name: 'cosin' is not a registered scheduler.*'cosine'"),
    ("model.trunk.name", "resnet1888", r"model\.trunk\.name: trunk name='resnet1888' is neither"),
    ("train.early_stopping.monitor", "mian", r"train\.early_stopping\.monitor: 'mian' is neither.*'main'"),
])
def test_each_family_name_is_checked(tmp_path, ds, key, value, pattern):
    raw = base(tmp_path, ds)
    section, *rest = key.split(".")
    node = raw.setdefault(section, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value
    refused(raw, pattern)


def test_split_method_and_task_names(tmp_path, ds):
    raw = base(tmp_path, ds)
    raw["tasks"][1]["split"] = {"method": "holdot"}
    raw["experiment"]["main_task"] = "c"
    msg = refused(raw, r"tasks\[1\]\.split\.method: 'holdot' is not a registered split method.*'holdout'")
    assert "experiment.main_task: 'c' is not a declared task" in msg and msg.startswith("2 invalid")


def test_head_option_is_checked_against_the_head(tmp_path, ds):
    raw = base(tmp_path, ds)
    raw["model"] = {"heads": {"a": {"name": "transfer", "kwargs": {"hiden": 3}}}}
    refused(raw, r"model\.heads\.a\.kwargs: 'hiden' is not an option; it accepts \['hidden_features', ")
    raw["model"] = {"heads": {"a": {"name": "trasnfer"}}}
    refused(raw, r"model\.heads\.a\.name: 'trasnfer' is not a registered head.*did you mean 'transfer'")
    raw = base(tmp_path, ds)
    raw["experiment"]["arms"][2] = {"name": "seq", "strategy": "sequential", "source": ["b"],
                                    "head": {"name": "transfer", "kwargs": {"hiden": 3}}}
    refused(raw, r"experiment\.arms\[2\]\.head\.kwargs: 'hiden' is not an option")


def test_weighting_and_trunk_options_are_checked(tmp_path, ds):
    raw = base(tmp_path, ds)
    raw["train"] = {"weighting": {"name": "main_aux", "kwargs": {"mm": 0.5}}}
    refused(raw, r"train\.weighting\.kwargs: weighting 'main_aux' has no hyper-parameter 'mm'; it accepts \['m', ")
    raw = base(tmp_path, ds)
    raw["model"] = {"trunk": {"name": "resnext29", "kwargs": {"widht": 0.125}}}
    refused(raw, r"model\.trunk\.kwargs: 'widht' is not an option.*did you mean 'width'")


def test_a_name_hidden_in_an_arm_override_is_found(tmp_path, ds):
    raw = base(tmp_path, ds)
    raw["experiment"]["arms"][2]["overrides"] = {"train.weighting.name": "uncertanty"}
    refused(raw, r"experiment\.arms\[2\]\.overrides: train\.weighting\.name: 'uncertanty' is not a registered "
                 r"weighting.*did you mean 'uncertainty'")
    raw["experiment"]["arms"][2]["overrides"] = {"train.weighting.nmae": "mean"}
    refused(raw, r"experiment\.arms\[2\]\.overrides: train\.weighting\.nmae: unknown key")


def test_quick_and_loto_grid_values_are_checked(tmp_path, ds, monkeypatch):
    raw = base(tmp_path, ds)
    raw["quick"] = {"data.sampler": "cyclik"}
    check_config(parse_config(raw))       # quick mode is checked when a run uses it, before its data
    monkeypatch.setattr(comparison, "prepare", lambda *a, **k: pytest.fail("data prepared before the check"))
    with pytest.raises(ConfigError, match=r"data\.sampler: 'cyclik' is not a registered sampler.*'cyclic'"):
        run_experiment(parse_config(raw), quick=True, progress=False)
    raw = base(tmp_path, ds)
    raw["loto"] = {"pool": ["a", "b"], "grid": {"train.optimizer.name": ["sgd", "adan"]}}
    refused(raw, r"loto\.grid\.train\.optimizer\.name\[1\]: train\.optimizer\.name: 'adan' is not a registered")


def test_source_arm_must_come_first(tmp_path, ds):
    raw = base(tmp_path, ds)
    raw["experiment"]["arms"][2]["source_arm"] = "later"
    refused(raw, r"experiment\.arms\[2\]\.source_arm: 'later' must name an arm listed before it")


def test_pretrained_path_is_expanded_and_checked_at_load(tmp_path, ds, monkeypatch):
    raw = base(tmp_path, ds)
    monkeypatch.delenv("POOL", raising=False)
    raw["experiment"]["arms"][2]["pretrained"] = "${POOL}/pool_trunk.pt"
    raw["experiment"]["arms"][2].pop("source_arm")
    with pytest.raises(ConfigError, match=r"experiment\.arms\[2\]\.pretrained: .*environment variable .* not set"):
        parse_config(raw)
    monkeypatch.setenv("POOL", str(tmp_path / "pool"))
    refused(raw, r"experiment\.arms\[2\]\.pretrained: '.*/pool/pool_trunk\.pt' is neither 'imagenet' nor an existing")
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "pool_trunk.pt").write_bytes(b"")
    cfg = check_config(parse_config(raw))
    assert cfg.experiment.arms[2].pretrained == str(tmp_path / "pool" / "pool_trunk.pt")


def test_refused_before_any_data_is_read(tmp_path, ds, monkeypatch):
    raw = base(tmp_path, ds)
    raw["experiment"]["arms"][2]["strategy"] = "finetun"
    monkeypatch.setattr(comparison, "prepare", lambda *a, **k: pytest.fail("data prepared before the check"))
    with pytest.raises(ConfigError, match=r"experiment\.arms\[2\]\.strategy"):
        run_experiment(parse_config(raw), progress=False)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"experiment\.arms\[2\]\.strategy: 'finetun'"):
        api.load_config(path)
    assert not (tmp_path / "run").exists()


def test_cli_prints_the_refusal_as_one_error(tmp_path, ds):
    from typer.testing import CliRunner

    from medmtl.cli import app

    raw = base(tmp_path, ds)
    raw["experiment"]["arms"][2]["strategy"] = "finetun"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "error: 1 invalid setting(s)" in result.output and "Traceback" not in result.output
    assert "experiment.arms[2].strategy: 'finetun'" in result.output
