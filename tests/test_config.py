"""The experiment schema: every invalid setting is a ConfigError naming its key path, never a traceback.

Reader roots are folders made in tmp_path, so these tests need the shared datasets only where
they say so (the default ``${MEDMTL_DATA}`` and ``experiments/datasets.yaml``).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from medmtl.cli import app
from medmtl.config import load_config
from medmtl.config.loader import parse_config
from medmtl.data.readers import READERS
from medmtl.errors import ConfigError
from medmtl.protocols import check_config

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    root = Path(os.environ.get("MEDMTL_DATA", "../shared/datasets")).expanduser()
    return root if root.is_absolute() else REPO / root


def folder_dataset(root: Path) -> Path:
    """An empty-but-valid folder for the schema (the schema checks the folder exists, not its images)."""
    (root / "no").mkdir(parents=True, exist_ok=True)
    (root / "yes").mkdir(exist_ok=True)
    return root


def task(name: str, root, **kw) -> dict:
    return {"name": name, "kind": "binary", "target": "class", "classes": ["no", "yes"],
            "reader": {"name": "folder", "root": str(root)}, **kw}


def experiment(tmp_path: Path, tasks: list[dict], **top) -> dict:
    return {"name": "cfgtest", "cache_dir": str(tmp_path / "cache"), "run_dir": str(tmp_path / "run"),
            "tasks": tasks, **top}


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def ds(tmp_path) -> Path:
    return folder_dataset(tmp_path / "ds")


# -- a valid config ------------------------------------------------------------------------------
def test_valid_config_round_trips(tmp_path, ds):
    cfg = load_config(write_yaml(tmp_path / "ok.yaml", experiment(tmp_path, [task("a", ds)])))
    assert cfg.tasks[0].reader.root == ds
    assert cfg.run_dir == tmp_path / "run" and cfg.cache_dir == tmp_path / "cache"
    assert cfg.tasks[0].metric == "auc"


# -- unknown keys ----------------------------------------------------------------------------------
def test_unknown_top_level_key_names_it(tmp_path, ds):
    with pytest.raises(ConfigError, match=r"(?m)^\s+colour: unknown key"):
        parse_config(experiment(tmp_path, [task("a", ds)], colour="red"))


def test_unknown_nested_reader_key_names_its_path(tmp_path, ds):
    t = task("a", ds)
    t["reader"] = {"name": "folder", "rooot": str(ds)}
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.reader\.rooot: unknown key") as info:
        parse_config(experiment(tmp_path, [t]))
    # the missing spelling-corrected key is reported too, and the union tag 'folder' is not in the path
    assert "tasks[0].reader.root: required key is missing" in str(info.value)
    assert "reader.folder" not in str(info.value)


def test_unknown_key_in_nested_section(tmp_path, ds):
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.split\.fractionz: unknown key"):
        parse_config(experiment(tmp_path, [task("a", ds, split={"fractionz": [0.8, 0.1, 0.1]})]))


# -- wrong types and missing paths ----------------------------------------------------------------
def test_wrong_type_names_path_and_expected_type(tmp_path, ds):
    tasks = [task("a", ds), task("b", ds, image={"size": "big"})]
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.image\.size: .*valid integer.*\(got 'big'\)"):
        parse_config(experiment(tmp_path, tasks))


def test_wrong_literal_lists_the_choices(tmp_path, ds):
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.image\.mode: .*'L' or 'RGB'.*\(got 'CMYK'\)"):
        parse_config(experiment(tmp_path, [task("a", ds, image={"mode": "CMYK"})]))


def test_missing_directory_names_key_path_and_the_path(tmp_path, ds):
    missing = tmp_path / "no_such_dataset"
    tasks = [task("a", ds), task("b", ds), task("c", missing)]
    with pytest.raises(ConfigError, match=rf"tasks\[2\]\.reader\.root: directory does not exist: {re.escape(str(missing))}"):
        load_config(write_yaml(tmp_path / "exp.yaml", experiment(tmp_path, tasks)))


def test_missing_manifest_file_names_key_path(tmp_path, ds):
    csv_path = tmp_path / "gone.csv"
    t = task("a", ds)
    t["reader"] = {"name": "manifest", "path": str(csv_path), "label_columns": ["class"]}
    with pytest.raises(ConfigError, match=rf"tasks\[0\]\.reader\.path: file does not exist: {re.escape(str(csv_path))}"):
        parse_config(experiment(tmp_path, [t]))


def test_missing_required_key(tmp_path, ds):
    t = task("a", ds)
    del t["target"]
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.target: required key is missing"):
        parse_config(experiment(tmp_path, [t]))


def test_several_errors_are_all_reported(tmp_path, ds):
    tasks = [task("a", ds), task("b", ds, image={"size": "big"}), task("c", tmp_path / "nope")]
    with pytest.raises(ConfigError, match=r"2 invalid setting") as info:
        parse_config(experiment(tmp_path, tasks), "exp.yaml")
    text = str(info.value)
    assert text.startswith("exp.yaml:")
    assert "tasks[1].image.size" in text and "tasks[2].reader.root" in text


# -- readers, tasks, splits ----------------------------------------------------------------------
def test_unknown_reader_lists_registered_ones(tmp_path, ds):
    t = task("a", ds)
    t["reader"] = {"name": "foldr", "root": str(ds)}
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.reader: .*'foldr'") as info:
        parse_config(experiment(tmp_path, [t]))
    for name in READERS:
        assert repr(name) in str(info.value), name


def test_reader_without_name_lists_registered_ones(tmp_path, ds):
    t = task("a", ds)
    del t["reader"]["name"]
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.reader: required key 'name' is missing; choose one of \[.*'folder'"):
        parse_config(experiment(tmp_path, [t]))


def test_duplicate_task_names(tmp_path, ds):
    with pytest.raises(ConfigError, match=r"task names must be unique; repeated: \['a'\]"):
        parse_config(experiment(tmp_path, [task("a", ds), task("b", ds), task("a", ds)]))


def test_binary_task_with_three_classes(tmp_path, ds):
    tasks = [task("a", ds), task("b", ds, classes=["no", "yes", "maybe"])]
    with pytest.raises(ConfigError, match=r"tasks\[1\]: a binary task has exactly 2 classes, got \['no', 'yes', 'maybe'\]"):
        parse_config(experiment(tmp_path, tasks))


@pytest.mark.parametrize("split, message", [
    ({"fractions": [0.7, 0.2, 0.2]}, r"tasks\[0\]\.split: fractions .* sum to 1, got \[0\.7, 0\.2, 0\.2\]"),
    ({"fractions": [1.2, -0.1, -0.1]}, r"tasks\[0\]\.split: fractions .* must be >= 0"),
    ({"fractions": [0.5, 0.5]}, r"tasks\[0\]\.split\.fractions\[2\]: required"),
    ({"method": "kfold", "n_splits": 5, "fold": 5}, r"tasks\[0\]\.split: fold=5 must be < n_splits=5"),
    ({"method": "random"}, r"tasks\[0\]\.split\.method: 'random' is not a registered split method; choose one of "
                           r"\['holdout', 'kfold', 'official'\]"),
])
def test_bad_split_settings(tmp_path, ds, split, message):
    with pytest.raises(ConfigError, match=message):
        check_config(parse_config(experiment(tmp_path, [task("a", ds, split=split)])))


def test_bad_task_name_and_metric(tmp_path, ds):
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.name: task names are lowercase snake_case"):
        parse_config(experiment(tmp_path, [task("Brain-Tumor", ds)]))
    with pytest.raises(ConfigError, match=r"tasks\[0\]: metric='acc' is not a registered metric; choose one of \['accuracy', 'auc'"):
        parse_config(experiment(tmp_path, [task("a", ds, metric="acc")]))


def test_empty_task_list(tmp_path):
    with pytest.raises(ConfigError, match=r"(?m)^\s+tasks: .*at least 1 item"):
        parse_config(experiment(tmp_path, []))


# -- path expansion ------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["${MEDMTL_DATA}", "$MEDMTL_DATA"])
def test_medmtl_data_expanded_when_set(tmp_path, monkeypatch, spelling):
    data = tmp_path / "datasets"
    folder_dataset(data / "brain")
    monkeypatch.setenv("MEDMTL_DATA", str(data))
    cfg = parse_config(experiment(tmp_path, [task("a", f"{spelling}/brain")]))
    assert cfg.tasks[0].reader.root == data / "brain"


def test_medmtl_data_defaults_to_shared_datasets(tmp_path, monkeypatch):
    """Unset, ``${MEDMTL_DATA}`` is ``../shared/datasets`` relative to the working directory."""
    work = tmp_path / "work"
    work.mkdir()
    folder_dataset(tmp_path / "shared" / "datasets" / "brain")
    monkeypatch.delenv("MEDMTL_DATA", raising=False)
    monkeypatch.chdir(work)
    cfg = parse_config(experiment(tmp_path, [task("a", "${MEDMTL_DATA}/brain")]))
    root = cfg.tasks[0].reader.root
    assert root == Path("../shared/datasets/brain")
    assert root.resolve() == (tmp_path / "shared" / "datasets" / "brain").resolve()
    # and a dataset missing there is reported with the expanded default path
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.reader\.root: directory does not exist: \.\./shared/datasets/absent"):
        parse_config(experiment(tmp_path, [task("a", "${MEDMTL_DATA}/absent")]))


def test_medmtl_data_default_finds_the_real_datasets(monkeypatch):
    monkeypatch.delenv("MEDMTL_DATA", raising=False)
    monkeypatch.chdir(REPO)
    if not (REPO / "../shared/datasets/brain_tumor_mri").is_dir():
        pytest.skip("no shared datasets at ../shared/datasets")
    cfg = parse_config({"tasks": [task("a", "${MEDMTL_DATA}/brain_tumor_mri")]})
    assert cfg.tasks[0].reader.root == Path("../shared/datasets/brain_tumor_mri")


def test_home_expansion(tmp_path, monkeypatch):
    home = tmp_path / "home"
    folder_dataset(home / "data" / "brain")
    monkeypatch.setenv("HOME", str(home))
    cfg = parse_config({"cache_dir": "~/cache", "run_dir": "~/runs/exp",
                        "tasks": [task("a", "~/data/brain")]})
    assert cfg.tasks[0].reader.root == home / "data" / "brain"
    assert cfg.cache_dir == home / "cache"
    assert cfg.run_dir == home / "runs" / "exp"


# -- the shipped experiment file -----------------------------------------------------------------
REQUIRED_TASKS = {
    "brain_tumor", "skin", "pcam", "busi_cls", "busi_seg", "busi_det", "mias_severity", "mias_tissue",
    "breastmnist", "retinamnist", "lidc_malignancy", "lidc_subtlety", "lidc_internal_structure",
    "lidc_calcification", "lidc_sphericity", "lidc_margin", "lidc_lobulation", "lidc_spiculation",
    "lidc_texture",
}


def test_datasets_yaml_declares_every_issue_task(monkeypatch):
    if not (data_root() / "brain_tumor_mri").is_dir():
        pytest.skip(f"no shared datasets at {data_root()} (set MEDMTL_DATA)")
    monkeypatch.chdir(REPO)  # the file's ${MEDMTL_DATA} default is relative to the repository root
    cfg = load_config(REPO / "experiments" / "datasets.yaml")
    names = [t.name for t in cfg.tasks]
    assert REQUIRED_TASKS <= set(names), sorted(REQUIRED_TASKS - set(names))
    by_name = {t.name: t for t in cfg.tasks}
    assert by_name["brain_tumor"].reader.root == data_root() / "brain_tumor_mri" or \
        by_name["brain_tumor"].reader.root.resolve() == (data_root() / "brain_tumor_mri").resolve()
    lidc = [n for n in names if n.startswith("lidc_") and by_name[n].kind in ("ordinal", "multiclass")]
    assert len(lidc) == 9  # malignancy plus the eight other radiologist characteristics


# -- YAML problems and the CLI -------------------------------------------------------------------
def test_yaml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\ntasks: [\n  - {name: a\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}: not valid YAML"):
        load_config(bad)


def test_binary_file_as_config_names_the_file(tmp_path):
    bad = tmp_path / "image.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}: not valid YAML"):
        load_config(bad)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nowhere\.yaml"):
        load_config(tmp_path / "nowhere.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping .* found list"):
        load_config(bad)


def test_cli_bad_config_prints_error_and_exits_2(tmp_path, ds):
    path = write_yaml(tmp_path / "bad.yaml",
                      experiment(tmp_path, [task("a", ds), task("b", ds), task("c", tmp_path / "missing_ds")]))
    result = CliRunner().invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert "tasks[2].reader.root" in result.stderr and str(tmp_path / "missing_ds") in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_yaml_syntax_error_exits_2(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("tasks: [\n")
    result = CliRunner().invoke(app, ["data", "inspect", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {bad}: not valid YAML")
    assert "Traceback" not in result.output


def test_cli_subprocess_has_no_traceback(tmp_path, ds):
    """The installed entry point, as a user runs it: an unknown nested key, exit code 2."""
    t = task("a", ds)
    t["reader"]["rooot"] = "x"
    path = write_yaml(tmp_path / "bad.yaml", experiment(tmp_path, [t]))
    exe = Path(sys.executable).with_name("medmtl")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "medmtl.cli"]
    proc = subprocess.run([*cmd, "data", "inspect", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "tasks[0].reader.rooot: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
