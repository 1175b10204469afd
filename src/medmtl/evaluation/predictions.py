"""Scores of a trained model on one split, as rows of ``results/predictions.csv``.

Test-time augmentation averages the scores over the 8 flips and 90-degree rotations of each
image (the dihedral group): a lesion has no preferred orientation.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from medmtl.data.dataset import collate
from medmtl.engine.validate import _scores, _targets
from medmtl.evaluation.stats import bootstrap_ci
from medmtl.kinds import DENSE_KINDS, SINGLE_LABEL_KINDS
from medmtl.metrics import box_ious, scored_metrics
from medmtl.metrics.dense import dice_per_image, iou_per_image

# Segmentation and detection have no per-class scores; their per-image metric values are the rows
# of ``results/predictions_dense.csv`` (arm, seed, task, split, id, group, lesion, <metric>...).
DENSE_METRICS = {kind: tuple(scored_metrics(kind)) for kind in sorted(DENSE_KINDS)}


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a (B, C, H, W) batch."""
    out = []
    for flip in (False, True):
        y = torch.flip(x, dims=(-1,)) if flip else x
        out.extend(torch.rot90(y, k, dims=(-2, -1)) for k in range(4))
    return out


@torch.no_grad()
def split_scores(model, dataset, tasks: list[str], specs: dict, *, tta: bool = False, batch_size: int = 128,
                 dense: dict | None = None):
    """``{task: {"y", "p", "item"}}`` for the classification tasks among ``tasks`` on ``dataset``.

    With ``dense`` (a dict), the segmentation and detection tasks among ``tasks`` are scored from
    the same forward passes (the un-augmented view) and ``dense`` is filled as :func:`dense_scores`
    returns it.
    """
    model.eval()
    device = next(model.parameters()).device      # scores run where the model is; results on the CPU
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = {t: {"y": [], "p": [], "item": []} for t in tasks if specs[t].kind in SINGLE_LABEL_KINDS}
    for batch in loader:
        mask = batch["label_mask"]
        on_device = {t: m.to(device) for t, m in mask.items()}
        views = dihedral(batch["image"].to(device)) if tta else [batch["image"].to(device)]
        summed: dict[str, torch.Tensor] = {}
        rows_of: dict[str, torch.Tensor] = {}
        for i, view in enumerate(views):
            for task, (output, rows) in model(view, label_mask=on_device).items():
                output, rows = output.float().cpu(), rows.cpu()
                if task in out:
                    p = _scores(specs[task].kind, output)
                    summed[task] = summed.get(task, 0) + p
                    rows_of[task] = rows
                elif dense is not None and i == 0 and task in tasks and specs[task].kind in DENSE_METRICS:
                    _add_dense(dense, task, specs[task].kind, output, rows, batch)
        for task, total in summed.items():
            rows = rows_of[task]
            out[task]["p"].append((total / len(views)).numpy())
            out[task]["y"].append(batch["labels"][task][rows].numpy())
            out[task]["item"].append(batch["index"][rows].numpy())
    if dense is not None:
        dense.update({t: {k: np.concatenate(v) for k, v in d.items()} for t, d in dense.items()})
    return {t: {k: np.concatenate(v) if v else np.zeros(0) for k, v in d.items()} for t, d in out.items()}


def _ids_and_groups(dataset, data, item: np.ndarray) -> tuple[list[str], list[str]]:
    """The record id and group (patient, lesion) of each dataset item index in ``item``."""
    items = dataset.items_[item.astype(int)]
    src_keys = [dataset.source_keys_[int(s)] for s in items[:, 1]]
    ids = [data.sources[k].cached.records[int(r)].id for k, r in zip(src_keys, items[:, 2])]
    groups = [str(data.sources[k].groups[int(r)]) for k, r in zip(src_keys, items[:, 2])]
    return ids, groups


def prediction_rows(scores: dict, dataset, data, specs: dict, *, arm: str, seed: int, split: str) -> pd.DataFrame:
    """Rows of the results layout (arm, seed, task, split, id, group, y_true, score_<class>)."""
    frames = []
    for task, d in scores.items():
        if len(d["y"]) == 0:
            continue
        ids, groups = _ids_and_groups(dataset, data, d["item"])
        frame = pd.DataFrame({"arm": arm, "seed": seed, "task": task, "split": split, "id": ids, "group": groups,
                              "y_true": d["y"].astype(int)})
        for k, c in enumerate(specs[task].classes):
            frame[f"score_{c}"] = d["p"][:, k]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------- dense tasks


def per_image_metrics(kind: str, y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image values whose mean is ``medmtl.metrics``' metric of the same name, and ``lesion``.

    Segmentation (``y`` masks, ``p`` probabilities, (n, H, W)): Dice and IoU at 0.5, an empty
    prediction of an empty mask scoring 1 as in ``medmtl.metrics.dice``. Detection (``y``/``p``
    (n, 5), box fractions then objectness): box IoU and hit (IoU >= 0.5) for images with a
    lesion, NaN for images without one, which have no box to find.
    """
    y, p = np.asarray(y), np.asarray(p)
    if kind == "segmentation":
        lesion = (y > 0).reshape(len(y), -1).any(axis=1)
        return {"lesion": lesion.astype(int), "dice": dice_per_image(y, p), "iou": iou_per_image(y, p)}
    if kind == "detection":
        has = y[:, 4] > 0.5
        ious = np.where(has, box_ious(y[:, :4], p[:, :4]), np.nan)
        hits = np.where(has, (ious >= 0.5).astype(float), np.nan)
        return {"lesion": has.astype(int), "box_iou": ious, "hit_rate": hits}
    raise ValueError(f"task kind {kind!r} has no per-image metrics; dense kinds are {sorted(DENSE_METRICS)}")


def dense_scores(model, dataset, tasks: list[str], specs: dict, *, batch_size: int = 128) -> dict:
    """``{task: {"item", "lesion", <metric>...}}`` per labelled image, for the segmentation and
    detection tasks among ``tasks`` (computed batch by batch, so no mask is kept in memory).

    No test-time augmentation: a mask or box would have to be mapped back through each flip.
    """
    dense: dict = {}
    split_scores(model, dataset, [t for t in tasks if specs[t].kind in DENSE_METRICS], specs,
                 batch_size=batch_size, dense=dense)
    return dense


def _add_dense(dense: dict, task: str, kind: str, output: torch.Tensor, rows: torch.Tensor, batch: dict) -> None:
    """Append one batch's per-image metrics of ``task`` to ``dense`` (lists, concatenated at the end)."""
    p = _scores(kind, output.float()).numpy()
    y = _targets(kind, batch["labels"][task], rows, batch["image"].shape[-1])
    for k, v in {"item": batch["index"][rows].numpy(), **per_image_metrics(kind, y, p)}.items():
        dense.setdefault(task, {}).setdefault(k, []).append(v)


def dense_rows(scores: dict, dataset, data, *, arm: str, seed: int, split: str) -> pd.DataFrame:
    """Rows of ``predictions_dense.csv`` (arm, seed, task, split, id, group, lesion, <metric>...)."""
    frames = []
    for task, d in scores.items():
        ids, groups = _ids_and_groups(dataset, data, d["item"])
        frames.append(pd.DataFrame({"arm": arm, "seed": seed, "task": task, "split": split, "id": ids,
                                    "group": groups, **{k: v for k, v in d.items() if k != "item"}}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def dense_metrics_of(rows: pd.DataFrame, *, n_boot: int = 2000, alpha: float = 0.05, random_state=0) -> dict:
    """``{arm: {seed: {task: {split: {metric, metric_ci_low, metric_ci_high}}}}}`` from dense rows.

    Each metric is the mean of its per-image values (images without a lesion are left out of
    box IoU and hit rate); the CI is a percentile bootstrap of that mean that resamples whole
    groups (patients; images for BUSI), see :func:`medmtl.evaluation.stats.bootstrap_ci`. A metric
    with no defined value, or too few images for a bootstrap, gets NaN bounds.
    """
    out: dict = {}
    if rows is None or not len(rows):
        return out
    metric_cols = sorted({m for ms in DENSE_METRICS.values() for m in ms} & set(rows.columns))
    for (arm, seed, task, split), r in rows.groupby(["arm", "seed", "task", "split"]):
        doc = {}
        for m in metric_cols:
            ok = r[m].notna().to_numpy()
            if not ok.any():
                continue
            v, g = r[m].to_numpy(np.float64)[ok], r["group"].astype(str).to_numpy()[ok]
            doc[m] = float(v.mean())
            try:
                _, (lo, hi) = bootstrap_ci(lambda _y, s: float(np.mean(s)), v, v, groups=g, n_boot=n_boot,
                                           alpha=alpha, stratified=False, random_state=random_state)
            except ValueError:
                lo = hi = float("nan")
            doc[f"{m}_ci_low"], doc[f"{m}_ci_high"] = lo, hi
        out.setdefault(arm, {}).setdefault(str(seed), {}).setdefault(task, {})[split] = doc
    return out
