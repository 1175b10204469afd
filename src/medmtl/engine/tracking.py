"""MLflow tracking: a sqlite store in the run dir unless ``MLFLOW_TRACKING_URI`` is set."""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

_ACTIVE: dict[str, str] = {}


def _uri(run_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def log_epoch(cfg, run_dir: Path, row: dict) -> None:
    """Log one history row as metrics at step = epoch (the run is created on first use and reused on resume)."""
    import mlflow  # lazy: seconds to import, and only runs with train.mlflow on use it

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = mlflow.MlflowClient(tracking_uri=_uri(run_dir))
    run_id_file = Path(run_dir) / "mlflow_run_id"
    if run_id_file.is_file():
        run_id = run_id_file.read_text().strip()
    else:
        exp = client.get_experiment_by_name(cfg.name)
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.name)
        run_id = client.create_run(exp_id, run_name=Path(run_dir).name).info.run_id
        run_id_file.write_text(run_id)
        for k, v in _flat(cfg.model_dump(mode="json", exclude={"tasks"})).items():
            client.log_param(run_id, k[:250], str(v)[:500])
    step = int(row["epoch"])
    for k, v in row.items():
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            client.log_metric(run_id, k.replace("/", "."), float(v), step=step)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out
