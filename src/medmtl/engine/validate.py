"""Scores of a model on one split: per-task predictions, losses and metrics (validation only here;
test metrics are computed once, at the end, by the evaluation layer)."""
from __future__ import annotations

import math

import numpy as np
import torch

from medmtl.kinds import SINGLE_LABEL_KINDS
from medmtl.metrics import compute_metric, scored_metrics


@torch.no_grad()
def predict_split(model, loader, specs: dict, device) -> dict[str, dict[str, np.ndarray]]:
    """``{task: {"y": targets, "p": scores, "index": dataset items}}`` over the labelled rows."""
    model.eval()
    out: dict[str, dict[str, list]] = {t: {"y": [], "p": [], "index": []} for t in specs}
    for batch in loader:
        x = batch["image"].to(device)
        preds = model(x, label_mask={t: m.to(device) for t, m in batch["label_mask"].items()})
        for task, (output, rows) in preds.items():
            rows = rows.cpu()
            spec = specs[task]
            out[task]["p"].append(_scores(spec.kind, output.float()).cpu().numpy())
            out[task]["y"].append(_targets(spec.kind, batch["labels"][task], rows, x.shape[-1]))
            out[task]["index"].append(batch["index"][rows].numpy())
    return {t: {k: np.concatenate(v) if v else np.zeros(0) for k, v in d.items()} for t, d in out.items()}


def _scores(kind: str, output: torch.Tensor) -> torch.Tensor:
    if kind in SINGLE_LABEL_KINDS:
        return output.softmax(dim=1)
    if kind in ("multilabel", "segmentation"):
        return output.sigmoid().squeeze(1) if kind == "segmentation" else output.sigmoid()
    return torch.cat([output[:, :4], output[:, 4:5].sigmoid()], dim=1)   # detection


def _targets(kind: str, labels, rows: torch.Tensor, size: int) -> np.ndarray:
    if kind == "detection":
        box = labels["box"][rows] / size
        return torch.cat([box, labels["objectness"][rows, None]], dim=1).numpy()
    return labels[rows].numpy()


def task_metrics(spec, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The task's declared metric plus the metrics every result of its kind carries (``scored``)."""
    names = scored_metrics(spec.kind)
    if spec.metric not in names:
        names = [spec.metric, *names]
    return {n: (compute_metric(n, y, p) if len(y) else math.nan) for n in names}


def monitored_tasks(specs: dict, monitor: str) -> list[str]:
    """The tasks whose validation metric the monitor averages (what model selection reads)."""
    if monitor in specs:
        return [monitor]
    if monitor == "all":
        return list(specs)
    return [t for t, s in specs.items() if s.role == "main"] or list(specs)


def monitor_value(metrics: dict[str, dict[str, float]], specs: dict, monitor: str) -> float:
    """``main``: mean of the main tasks' own metric; ``all``: mean over tasks; else one task's metric."""
    chosen = monitored_tasks(specs, monitor)
    vals = [metrics[t][specs[t].metric] for t in chosen if t in metrics]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan
