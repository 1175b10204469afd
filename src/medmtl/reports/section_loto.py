"""Leave-one-task-out pre-training (Mormont et al. 2020) in the report: the rank table of the
pre-training combinations and the transfer comparison with its score-difference figures.

Inputs: ``loto/rank_table.csv`` and ``loto/summary.json`` (written by :func:`medmtl.protocols.loto.run_loto`)
and ``results/metrics.json``, where the LOTO arms (``loto_feature_extraction``, ``loto_finetune``,
``loto_joint``) sit beside the experiment's baselines. The baselines are found by strategy among the
experiment's arms: ``feature_extraction`` and ``finetune`` without ``source_arm`` (the trunk the config
starts from, ImageNet in s2) and ``scratch``.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from medmtl.reports._figures import Figure, _colours, encode, new_figure
from medmtl.reports._sections import REPORT_SECTIONS, Section, seed_values

SPLIT = "test"
MTL_FE, MTL_FT, JOINT = "loto_feature_extraction", "loto_finetune", "loto_joint"


def _loto_dir(inputs):
    out = inputs.run_dir / "loto"
    return out if (out / "summary.json").is_file() else None


def _summary(inputs) -> dict:
    return json.loads((inputs.run_dir / "loto" / "summary.json").read_text())


@REPORT_SECTIONS.register("loto_ranks", order=40)
def loto_rank_section(inputs) -> Section | None:
    out = _loto_dir(inputs)
    if out is None:
        return None
    path = out / "rank_table.csv"
    if not path.is_file():
        inputs.note("sections", f"LOTO rank table: {path} is absent (a run from before the rank table)")
        return None
    summary = _summary(inputs)
    table = pd.read_csv(path, index_col=0)
    combos = summary.get("combinations") or {}
    chosen: dict[str, list[str]] = {}
    for target, info in (summary.get("targets") or {}).items():
        if "combination" in info:
            chosen.setdefault(info["combination"], []).append(target)
    pool_cid = (summary.get("artifact") or {}).get("combination_id")
    rows = []
    for cid, r in table.iterrows():
        row = {"combination": cid, **{k.split(".")[-1]: v for k, v in (combos.get(cid) or {}).items()}}
        row.update({k: float(v) for k, v in r.items()})
        row["chosen for"] = ", ".join(chosen.get(cid, [])) or "-"
        row["pool trunk"] = "yes" if cid == pool_cid else ""
        rows.append(row)
    tasks = [c for c in table.columns if not c.startswith("mean_rank")]
    lc = (inputs.config or {}).get("loto") or {}
    text = [f"Rank of each pre-training combination on each left-out task (1 = best mean validation AUC over "
            f"seeds {lc.get('seeds')}, linear SVM on the frozen trunk), the mean rank over every left-out task, and "
            "the mean rank without each task: a target is transferred from the combination with the best mean "
            "rank over the OTHER left-out tasks (Mormont et al. 2020, Section IV-D).",
            "Left-out groups (related tasks left out together): "
            + "; ".join(" + ".join(g) for g in summary.get("groups") or []) + "."]
    if lc.get("targets") is not None:
        rest = [t for t in lc.get("pool") or [] if t not in tasks]
        text.append(f"loto.targets restricts the left-out (and transferred-to) tasks to {tasks}; {rest} always "
                    "train (as the paper kept 10 of its 22 tasks for evaluation).")
    art = summary.get("artifact")
    if art:
        text.append(f"Pool trunk: artifacts/{art['file']} (combination {art['combination_id']}, seed {art['seed']}, "
                    f"trained on all {len(art['tasks'])} pool tasks; model card artifacts/model_card.md).")
    return Section("LOTO: rank of each pre-training combination", text=text, table=rows,
                   figures=[_rank_figure(table[tasks], table["mean_rank"])], data=rows)


def _rank_figure(ranks: pd.DataFrame, mean: pd.Series) -> Figure:
    n, k = ranks.shape
    fig = new_figure(1.6 + 0.9 * (k + 1), 1.2 + 0.35 * n)
    ax = fig.add_subplot()
    values = np.column_stack([ranks.to_numpy(float), mean.to_numpy(float)])
    top = max(n, 2)
    ax.imshow(values, cmap="Blues_r", aspect="auto", vmin=1, vmax=top)
    for i in range(n):
        for j in range(k + 1):
            dark = values[i, j] < 1 + (top - 1) / 2   # the colour map is dark at rank 1
            ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    ax.set_xticks(range(k + 1), [*ranks.columns, "mean"], rotation=45, ha="right", fontsize=8)
    # the readable part of the combination id (its hash only disambiguates file names)
    ax.set_yticks(range(n), [str(c).rsplit("-", 1)[0] for c in ranks.index], fontsize=7)
    ax.set_title("rank per left-out task (1 = best)", fontsize=9)
    return Figure("loto", "LOTO rank matrix", "Rank of each pre-training combination (rows) on each left-out task "
                  "(columns) and the mean rank; the rows are sorted by mean rank.", encode(fig))


def _std(v: list[float]) -> float:
    return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def baseline_arms(config: dict) -> dict[str, str]:
    """{"fe": arm, "ft": arm, "scratch": arm} among the experiment's arms, by strategy."""
    out = {}
    for arm in ((config or {}).get("experiment") or {}).get("arms") or []:
        if arm.get("source_arm"):
            continue
        key = {"feature_extraction": "fe", "finetune": "ft", "scratch": "scratch"}.get(arm.get("strategy"))
        if key and key not in out:
            out[key] = arm["name"]
    return out


def transfer_table(inputs, targets: list[str]) -> list[dict]:
    """Per target: each method's test metric (mean, std over seeds) and the MTL minus ImageNet
    differences of feature extraction and fine-tuning."""
    base = baseline_arms(inputs.config)
    methods = [("scratch", base.get("scratch")), ("imagenet fe", base.get("fe")), ("imagenet ft", base.get("ft")),
               ("mtl fe", MTL_FE), ("mtl ft", MTL_FT), ("joint", JOINT)]
    rows = []
    for t in targets:
        info = inputs.tasks.get(t)
        metric = (info.metric if info is not None and info.metric else None) or "auc"
        row = {"task": t, "metric": metric}
        vals = {}
        for label, arm in methods:
            v = seed_values(inputs.metrics, arm, t, SPLIT, metric) if arm else []
            vals[label] = v
            row[f"{label} ({arm or 'absent'})"] = float(np.mean(v)) if v else math.nan
            row[f"{label} std"] = _std(v)
        for kind in ("fe", "ft"):
            a, b = vals[f"mtl {kind}"], vals[f"imagenet {kind}"]
            row[f"{kind}: mtl - imagenet"] = float(np.mean(a) - np.mean(b)) if a and b else math.nan
            # the paper's error bars: 2 std of the multi-task transfer (fe), 2 x the larger std (ft)
            spread = _std(a) if kind == "fe" else np.nanmax([_std(a), _std(b), -np.inf])
            row[f"{kind}: 2 std"] = 2 * float(spread) if np.isfinite(spread) else math.nan
        rows.append(row)
    return rows


@REPORT_SECTIONS.register("loto_transfer", order=41)
def loto_transfer_section(inputs) -> Section | None:
    if _loto_dir(inputs) is None:
        return None
    summary = _summary(inputs)
    targets = _order(inputs, list(summary.get("targets") or {}))
    rows = transfer_table(inputs, targets)
    if not rows:
        return None
    figures = [_difference_figure(rows, kind) for kind in ("fe", "ft")] + [_methods_figure(rows)]
    text = ["Test metric of each target (mean over seeds) by training from scratch, ImageNet feature extraction "
            "and fine-tuning, the same two protocols from the LOTO multi-task trunk, and joint training on the "
            "whole pool; and the score difference multi-task minus ImageNet for both protocols (the study's "
            "Figures 2-4). Tasks sorted by training-set size.",
            "For comparison only (different data: the paper's ten pathology tasks, DenseNet121): multi-task "
            "feature extraction beat ImageNet on nine of ten tasks, by at most +3.52% (accuracy, BoneMarrow), and "
            "lost by at most 0.21% ROC AUC (Necrose); fine-tuning differences were all within two standard "
            "deviations (Mormont et al. 2020, Section V-A)."]
    return Section("LOTO transfer: multi-task vs ImageNet, scratch and joint", text=text, table=rows,
                   figures=figures, data=rows)


def _order(inputs, targets: list[str]) -> list[str]:
    path = inputs.run_dir / "results" / "data.json"
    if not path.is_file():
        return targets
    data = json.loads(path.read_text())
    size = {t: sum((data.get(t, {}).get("splits") or {}).get("train", {}).values()) for t in targets}
    return sorted(targets, key=lambda t: size[t])


def _difference_figure(rows: list[dict], kind: str) -> Figure:
    name = {"fe": "feature extraction", "ft": "fine-tuning"}[kind]
    fig = new_figure(5.2, 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    d = np.array([r[f"{kind}: mtl - imagenet"] for r in rows], float)
    err = np.nan_to_num(np.array([r[f"{kind}: 2 std"] for r in rows], float))
    colours = ["tab:green" if v > 0 else "tab:red" for v in np.nan_to_num(d)]
    y = np.arange(len(rows))
    ax.barh(y, np.nan_to_num(d), xerr=err, color=colours, alpha=0.8, capsize=3)
    for yi, v in zip(y, d):
        ax.text(v if np.isfinite(v) else 0, yi, f" {v:+.3f} " if np.isfinite(v) else " n/a (an arm is absent)",
                va="center", ha="left" if not np.isfinite(v) or v >= 0 else "right", fontsize=8)
    # symmetric, and at least +-0.05, so that a tiny difference does not fill the axis
    span = max(0.05, float(np.nanmax(np.abs(np.concatenate([d, d + err, d - err])), initial=0)) * 1.3)
    ax.set_xlim(-span, span)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, [f"{r['task']} ({r['metric']})" for r in rows], fontsize=8)
    ax.set(xlabel=f"score difference (multi-task - ImageNet), {SPLIT}", title=f"{name}")
    caption = (f"Absolute score difference between multi-task (LOTO) and ImageNet pre-training with {name} as "
               "transfer protocol; positive = multi-task better. Error bars: two standard deviations over seeds "
               + ("of the multi-task transfer" if kind == "fe" else "(the larger of the two)")
               + " (absent with one seed). As the study's Figure " + ("2." if kind == "fe" else "3."))
    return Figure("loto", f"Score difference, {name}", caption, encode(fig))


def _methods_figure(rows: list[dict]) -> Figure:
    labels = ["scratch", "imagenet fe", "imagenet ft", "mtl fe", "mtl ft", "joint"]
    cols = {lab: next((k for k in rows[0] if k.startswith(f"{lab} (")), None) for lab in labels}
    labels = [lab for lab in labels if cols[lab] is not None]
    fig = new_figure(1.6 + 1.3 * len(rows), 3.4)
    ax = fig.add_subplot()
    width = 0.8 / max(len(labels), 1)
    for i, (lab, colour) in enumerate(zip(labels, _colours(len(labels)))):
        mean = np.array([r[cols[lab]] for r in rows], float)
        err = np.nan_to_num(2 * np.array([r[f"{lab} std"] for r in rows], float))
        ax.bar(np.arange(len(rows)) + (i - (len(labels) - 1) / 2) * width, np.nan_to_num(mean), width,
               yerr=err, color=colour, label=lab, capsize=2)
    ax.set_xticks(range(len(rows)), [r["task"] for r in rows], fontsize=8)
    finite = [r[cols[lab]] for r in rows for lab in labels if np.isfinite(r[cols[lab]])]
    low = min(finite) if finite else 0.0
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set(ylabel=f"{SPLIT} metric", title="transfer methods per target")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    return Figure("loto", "Methods per target", "Test metric per target: training from scratch, ImageNet feature "
                  "extraction and fine-tuning, multi-task (LOTO) feature extraction and fine-tuning, joint training; "
                  "bars are means over seeds, error bars two standard deviations (as the study's Figure 4).",
                  encode(fig))
