"""Load an experiment YAML into :class:`ExperimentConfig` with errors that name the key path."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from medmtl.config.schema import ExperimentConfig
from medmtl.data.readers import READERS
from medmtl.errors import ConfigError


def format_loc(loc: tuple) -> str:
    """``('tasks', 2, 'reader', 'folder', 'root')`` -> ``tasks[2].reader.root``.

    pydantic inserts the discriminator tag of a union member into the location; it is not a key
    the user wrote, so it is dropped.
    """
    out = ""
    prev = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif prev == "reader" and part in READERS:
            pass
        else:
            out += ("." if out else "") + str(part)
        prev = part
    return out or "<root>"


def _format(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s)"]
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and indentation)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "union_tag_not_found" and err["loc"][-1:] == ("reader",):
            msg = f"required key 'name' is missing; choose one of {READERS.list()}"
        given = err.get("input")
        shown = "" if err["type"] in ("missing",) or isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {format_loc(err['loc'])}: {msg}{shown}")
    return "\n".join(lines)


def parse_config(data: dict, source: str = "<config>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate a YAML experiment file.

    Raises:
        ConfigError: the file is missing, is not YAML, or a setting is invalid (the message
            names each key path, what was expected and what was given).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, found {type(data).__name__}")
    data.update(overrides or {})
    return parse_config(data, str(path))


def save_config(cfg: ExperimentConfig, run_dir: str | Path) -> Path:
    """The fully resolved config next to every artefact (paths expanded, defaults filled in)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path
