"""Figures drawn from the results files: ROC curves, training curves, confusion matrices.

Figures are built on ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot state), so the report
draws the same way on a headless server and in a notebook, and encoded as base64 PNG.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix, roc_curve

from medmtl.evaluation.stats import auc_fast
from medmtl.reports._layout import CLASSIFICATION, Inputs, model_run

DPI = 96


@dataclass
class Figure:
    """One figure of the page: ``kind`` groups it (roc, curves, confusion, tsne, gradcam)."""

    kind: str
    title: str
    caption: str
    png: str   # base64


def new_figure(width: float, height: float):
    return MplFigure(figsize=(width, height), layout="constrained")


def encode(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colours(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# -- ROC ---------------------------------------------------------------------------------------
def roc_curve_of(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr): binary on the positive (second) class; with more classes the macro average of the
    one-vs-rest curves of the classes present, their TPR interpolated on a common FPR grid."""
    if s.shape[1] == 2:
        fpr, tpr, _ = roc_curve(y == 1, s[:, 1])
        return fpr, tpr
    grid = np.linspace(0, 1, 201)
    tprs = []
    for c in np.unique(y):
        fpr, tpr, _ = roc_curve(y == c, s[:, c])
        tprs.append(np.interp(grid, fpr, tpr))
    return grid, np.mean(tprs, axis=0)


def roc_figures(inputs: Inputs) -> list[Figure]:
    """ROC curves per classification task (one curve per arm); a task scored per group gets a
    second figure with the image-level curves."""
    seed = inputs.reference_seed
    figures = []
    for task, info in inputs.tasks.items():
        if info.kind not in CLASSIFICATION:
            inputs.note("roc", f"task {task} is {info.kind}: no ROC curve (its metrics are in the table)")
            continue
        if inputs.predictions is not None and task not in set(inputs.predictions["task"]):
            continue  # an auxiliary task: trained, never scored on test, so absent from the table too
        curves = [(a, inputs.task_predictions(a, seed, task)) for a in inputs.arms]
        curves = [(a, r) for a, r in curves if r is not None and r["y_true"].nunique() > 1]
        if not curves:
            if inputs.predictions is not None:
                inputs.note("roc", f"task {task}: no test predictions with two classes for seed {seed}")
            continue
        level = "group" if info.evaluate_at == "group" else ""
        figures.append(_roc_figure(inputs, task, info, curves, seed, level=level))
        if info.evaluate_at == "group":
            # the image-level curves beside the group (lesion) level ones, as the diagnostic studies show both
            p = inputs.predictions
            rows = [(a, p[(p.arm == a) & (p.seed == seed) & (p.task == task) & (p.split == "test")]) for a, _ in curves]
            figures.append(_roc_figure(inputs, task, info, rows, seed, level="image"))
    return figures


def _roc_figure(inputs: Inputs, task: str, info, curves: list, seed, level: str) -> Figure:
    """One ROC figure of ``task``: a curve per (arm, rows); ``level`` names group or image scoring."""
    fig = new_figure(4.6, 4.2)
    ax = fig.add_subplot()
    for (arm, rows), colour in zip(curves, _colours(len(curves))):
        y, s = rows["y_true"].to_numpy(int), inputs.scores(rows, task)
        fpr, tpr = roc_curve_of(y, s)
        ax.plot(fpr, tpr, color=colour, lw=1.6, label=f"{arm} (AUC {auc_fast(y, s):.3f}, n={len(y)})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    title = f"ROC: {task}, {level} level" if level else f"ROC: {task}"
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    how = ("positive class " + repr(info.classes[1]) if len(info.classes) == 2 else
           "macro average of the one-vs-rest curves (TPR interpolated on a common FPR grid); "
           "AUC = macro one-vs-rest")
    unit = {"group": "; one point per group (the mean score of its images)",
            "image": "; one point per image (the same predictions, not grouped)"}.get(level, "")
    return Figure("roc", title, f"ROC curves of {task} on the test split, seed {seed}, "
                  f"one curve per arm; {how}{unit}.", encode(fig))


# -- training curves ----------------------------------------------------------------------------
def curve_figures(inputs: Inputs) -> list[Figure]:
    figures = []
    for arm in inputs.arms:
        if any(a.startswith(f"{arm}/") for a in inputs.arm_dirs):
            continue       # a sweep: its sub-arms get the curves, one each
        histories = {}
        for seed, path in inputs.arm_dirs.get(arm, {}).items():
            run = path if (path / "history.csv").is_file() else model_run(path)
            if run is not None and (run / "history.csv").is_file():
                histories[seed] = pd.read_csv(run / "history.csv")
            else:
                inputs.note("curves", f"arm {arm} seed {seed}: {path / 'history.csv'} is absent")
        if not histories:
            if arm not in inputs.arm_dirs:
                inputs.note("curves", f"arm {arm}: no run dir arms/{arm}/seed<k>/, so no training curves")
            continue
        tasks = list(dict.fromkeys(c.split("/", 1)[1] for h in histories.values() for c in h.columns
                                   if c.startswith("train_loss/")))
        fig = new_figure(9.0, 3.6)
        ax_loss, ax_val = fig.subplots(1, 2)
        colours = dict(zip(tasks, _colours(len(tasks))))
        shown = set()
        for seed, h in histories.items():
            for t in tasks:
                label = t if t not in shown else None
                shown.add(t)
                style = {"color": colours[t], "lw": 1.4, "alpha": 0.9 if len(histories) == 1 else 0.6, "marker": "."}
                if f"train_loss/{t}" in h:
                    ax_loss.plot(h["epoch"], h[f"train_loss/{t}"], label=label, **style)
                col = _val_column(h, t, inputs.tasks.get(t))
                if col:
                    ax_val.plot(h["epoch"], h[col], label=f"{t}: {col.split('/')[0].removeprefix('val_')}"
                                if label else None, **style)
        ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss per task")
        ax_val.set(xlabel="epoch", ylabel="validation metric", title="validation metric per task")
        for ax in (ax_loss, ax_val):
            ax.legend(fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        seeds = ", ".join(map(str, histories))
        figures.append(Figure("curves", f"Training curves: {arm}",
                              f"Arm {arm}, seeds {seeds} (one line per task and seed): mean training loss per "
                              "epoch and each task's own validation metric (history.csv).", encode(fig)))
    return figures


def _val_column(h: pd.DataFrame, task: str, info) -> str | None:
    cols = [c for c in h.columns if c.startswith("val_") and c.endswith(f"/{task}")]
    if info is not None and info.metric and f"val_{info.metric}/{task}" in cols:
        return f"val_{info.metric}/{task}"
    return cols[0] if cols else None


# -- confusion matrices -------------------------------------------------------------------------
def confusion_figures(inputs: Inputs) -> list[Figure]:
    seed = inputs.reference_seed
    figures = []
    for task, info in inputs.tasks.items():
        if info.kind not in CLASSIFICATION:
            inputs.note("confusion", f"task {task} is {info.kind}: no confusion matrix")
            continue
        panels = [(a, inputs.task_predictions(a, seed, task)) for a in inputs.arms]
        panels = [(a, r) for a, r in panels if r is not None]
        if not panels:
            continue
        k = len(info.classes)
        side = 1.2 + 0.45 * k
        fig = new_figure(max(3.2, side) * len(panels), max(3.0, side))
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        labels = [c if len(c) <= 12 else c[:11] + "…" for c in info.classes]
        for ax, (arm, rows) in zip(axes, panels):
            y = rows["y_true"].to_numpy(int)
            pred = inputs.scores(rows, task).argmax(axis=1)
            cm = confusion_matrix(y, pred, labels=list(range(k)))
            norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
            ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(k), labels, fontsize=8)
            ax.set(xlabel="predicted", ylabel="true", title=f"{arm} (n={len(y)})")
        figures.append(Figure("confusion", f"Confusion matrices: {task}",
                              f"{task}, test split, seed {seed}: predicted class = argmax of the scores; "
                              "counts in the cells, colour = share of the true class (row).", encode(fig)))
    return figures
