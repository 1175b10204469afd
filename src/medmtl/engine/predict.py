"""Scores for new image files from a finished run (its resolved config and best checkpoint)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medmtl.config import load_config
from medmtl.data.cache import resize, to_mode
from medmtl.data.pipeline import TaskSpec
from medmtl.data.records import FileSource
from medmtl.data.transforms import build_transform
from medmtl.engine import checkpoint as ckpt
from medmtl.engine.build import build_model
from medmtl.errors import MedmtlError
from medmtl.kinds import CLASSIFICATION_KINDS


def _specs(saved: list[dict]):
    return [TaskSpec(d["name"], d["kind"], tuple(d["classes"]), d["target"], d["source"], d["role"],
                     d["loss_weight"], d["metric"], d["group_key"], d["domain"], d.get("evaluate_at", "image"))
            for d in saved]


def default_device() -> torch.device:
    """Where scoring runs: the GPU when there is one (training's device is Fabric's choice)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_run(run_dir: Path, device: str | torch.device = "cpu"):
    """(config, model in eval mode on ``device``, task specs) of a run directory."""
    best = run_dir / "checkpoints" / "best.ckpt"
    if not best.is_file():
        raise MedmtlError(f"{run_dir} has no checkpoints/best.ckpt: is it a finished medmtl run?")
    cfg = load_config(run_dir / "config.yaml")
    state = ckpt.load(best)
    specs = _specs(state["tasks"])
    cfg.model.trunk.pretrained = None   # the checkpoint holds the trained weights
    # ... but not always the options that came with the start weights (TF padding of an ImageNet
    # efficientnet_lite0): without them the same weights would run in another network
    saved = {k: v for k, v in (state.get("trunk_kwargs") or {}).items() if k not in ("in_chans", "small_input")}
    cfg.model.trunk.kwargs = {**saved, **cfg.model.trunk.kwargs}
    model = build_model(cfg, specs)
    model.load_state_dict(state["model"])
    return cfg, model.eval().to(device), specs


@torch.no_grad()
def predict_files(run_dir: Path, paths: list[Path], task: str | None = None):
    cfg, model, specs = load_run(run_dir)
    names = [s.name for s in specs]
    if task is not None and task not in names:
        raise MedmtlError(f"--task {task!r} is not a task of this run; it has {names}")
    chosen = [s for s in specs if task in (None, s.name) and s.kind in CLASSIFICATION_KINDS]
    rows = []
    for path in paths:
        if not path.is_file():
            raise MedmtlError(f"image not found: {path}")
        native = FileSource(path).load()
        for spec in chosen:
            tcfg = cfg.task(spec.name)
            img = resize(to_mode(native, tcfg.image.mode), tcfg.image.size).reshape(tcfg.image.size, tcfg.image.size, -1)
            size = cfg.data.size or tcfg.image.size
            x = build_transform(cfg.data.augmentation, train=False, size=size, in_chans=cfg.model.trunk.in_chans)(img)["image"]
            out, _ = model(x[None])[spec.name]
            probs = (out.sigmoid() if spec.kind == "multilabel" else out.softmax(1))[0].numpy()
            row = {"image": str(path), "task": spec.name}
            row.update({f"score_{c}": float(p) for c, p in zip(spec.classes, probs)})
            row["predicted"] = spec.classes[int(np.argmax(probs))]
            rows.append(row)
    return pd.DataFrame(rows)
