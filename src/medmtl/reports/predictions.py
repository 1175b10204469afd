"""Per-image scores of a finished training run on one split, as ``results/predictions.csv`` rows."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from medmtl.data.dataset import MultiTaskDataset
from medmtl.data.pipeline import prepare
from medmtl.engine.predict import default_device, load_run
from medmtl.errors import MedmtlError
from medmtl.evaluation.predictions import prediction_rows, split_scores
from medmtl.reports._layout import CLASSIFICATION, ID_COLUMNS

log = logging.getLogger("medmtl.reports")


def load_split(run_dir: Path, split: str = "test"):
    """(config, model in eval mode, task specs, dataset of ``split``) of a finished run.

    The data are rebuilt from the run's own config (the decode cache makes this fast) and its own
    split files: ``cfg.run_dir`` is pointed at ``run_dir`` so a moved run still finds them.
    """
    run_dir = Path(run_dir)
    cfg, model, specs = load_run(run_dir, device=default_device())
    cfg.run_dir = run_dir
    data = prepare(cfg, progress=False)
    dataset = MultiTaskDataset(data, split, tasks=[s.name for s in specs], preset=cfg.data.augmentation,
                               train=False, size=cfg.data.size, in_chans=cfg.model.trunk.in_chans)
    return cfg, model, specs, dataset


def write_predictions(run_dir: str | Path, arm: str, seed: int, split: str = "test",
                      out_csv: str | Path | None = None, *, tta: bool = False) -> pd.DataFrame:
    """Score ``split`` with a run's best checkpoint and merge the rows into ``out_csv``.

    The scores and rows come from :mod:`medmtl.evaluation.predictions` (what the experiment
    runner uses), so a report and the runner write identical rows.

    Rows follow the layout in :mod:`medmtl.evaluation`: ``arm, seed, task, split, id, group,
    y_true, score_<class>...`` for the single-label tasks (binary, multiclass, ordinal). Rows
    already in ``out_csv`` for the same ``arm``, ``seed`` and ``split`` are replaced in place, so a
    re-run neither duplicates them nor changes the order of the arms; other rows are kept.
    Multilabel, segmentation and detection tasks have no class index per image and are left out
    (logged); their metrics live in ``metrics.json``. Not safe for two processes writing one file at once.

    Args:
        run_dir: a finished training run (``config.yaml``, ``checkpoints/best.ckpt``).
        arm: arm name written in the ``arm`` column.
        seed: seed written in the ``seed`` column.
        split: ``test`` or ``val``.
        out_csv: file to write (default ``run_dir/predictions.csv``).
        tta: average the scores over the 8 flips and rotations of each image.

    Returns:
        The rows of this run and split.

    Raises:
        MedmtlError: no checkpoint in ``run_dir``, or ``split`` is not ``val``/``test``.
    """
    if split not in ("val", "test"):
        raise MedmtlError(f"write_predictions: split={split!r}; choose 'val' or 'test'")
    run_dir = Path(run_dir)
    out_csv = Path(out_csv) if out_csv is not None else run_dir / "predictions.csv"

    cfg, model, specs, dataset = load_split(run_dir, split)
    skipped = [s.name for s in specs if s.kind not in CLASSIFICATION]
    if skipped:
        log.info("predictions: tasks %s are not single-label classification; no per-image rows written", skipped)
    spec_map = {s.name: s for s in specs}
    scores = split_scores(model, dataset, list(spec_map), spec_map, tta=tta, batch_size=cfg.data.batch_size)
    new = prediction_rows(scores, dataset, dataset.data, spec_map, arm=arm, seed=int(seed), split=split)
    if new.empty:
        new = pd.DataFrame(columns=list(ID_COLUMNS))
    if out_csv.is_file():
        old = pd.read_csv(out_csv, dtype={"arm": str, "task": str, "split": str, "id": str, "group": str})
        same = ((old["arm"] == arm) & (old["seed"] == int(seed)) & (old["split"] == split)).to_numpy()
        # replaced rows go where the old ones were, so the order of arms in the file stays put
        at = int(same.argmax()) if same.any() else len(old)
        merged = pd.concat([old[:at][~same[:at]], new, old[at:][~same[at:]]], ignore_index=True)
    else:
        merged = new
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.tmp{os.getpid()}")
    merged.to_csv(tmp, index=False)
    tmp.replace(out_csv)
    return new
