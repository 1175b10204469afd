"""Which auxiliary tasks the ``spearman`` weighting kept (Fang et al. 2019, sec. 2.1): each auxiliary
task's Spearman r and p against the main task on the training images, and its weight.

Inputs: the ``weighting.json`` that every training run with a data-driven weighting writes
(``[applications/<app>/]arms/<arm>/seed<k>/weighting.json``) and, for tasks cut from a continuous
value, the training-median thresholds in ``splits/thresholds.json`` (of the run, or of the application).
The statistics depend only on the training labels, so arms and seeds that share a split give the
same row; such rows are shown once, with the runs they came from.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from medmtl.reports._sections import REPORT_SECTIONS, Section


def _application(run_dir: Path, path: Path) -> str:
    parts = path.relative_to(run_dir).parts
    return parts[1] if parts[0] == "applications" else ""


def _thresholds(run_dir: Path, app: str) -> dict:
    """{task: {"threshold", ...}} from the application's split dir, else the run's."""
    out = {}
    for folder in (run_dir, run_dir / "applications" / app if app else None):
        path = folder / "splits" / "thresholds.json" if folder is not None else None
        if path is not None and path.is_file():
            out.update(json.loads(path.read_text()))
    return out


def spearman_docs(run_dir: Path) -> list[tuple[Path, dict]]:
    """Every ``weighting.json`` of the spearman weighting under ``run_dir``, read once."""
    docs = [(path, json.loads(path.read_text())) for path in sorted(Path(run_dir).rglob("weighting.json"))]
    return [(path, doc) for path, doc in docs if doc.get("name") == "spearman"]


def spearman_rows(run_dir: Path, docs: list[tuple[Path, dict]] | None = None) -> list[dict]:
    """One row per (application, main task, auxiliary task, decision); ``runs`` lists arm/seed."""
    rows: dict[tuple, dict] = {}
    for path, doc in spearman_docs(run_dir) if docs is None else docs:
        app = _application(run_dir, path)
        cuts = _thresholds(run_dir, app)
        run = "/".join(p for p in path.parent.relative_to(run_dir).parts if p not in ("applications", app, "arms"))
        for task, rep in (doc.get("report") or {}).items():
            r, p = _num(rep.get("r")), _num(rep.get("p"))
            key = (app, doc.get("main"), task, _round(r), _round(p), rep.get("n"), bool(rep.get("kept")))
            cut = cuts.get(task) or {}
            row = rows.setdefault(key, {
                "application": app, "main task": doc.get("main"), "auxiliary task": task,
                "binarised at (training median)": _num(cut.get("threshold")),
                "Spearman r": r, "p": p, "n": rep.get("n"),
                "kept (p < alpha)": "kept" if rep.get("kept") else "dropped",
                "weight |r|": _num(rep.get("weight")), "runs": []})
            row["runs"].append(run)
    out = []
    for row in rows.values():
        row["runs"] = ", ".join(row["runs"])
        out.append(row)
    return out


def _num(v) -> float:
    return math.nan if v is None else float(v)


def _round(v: float):
    return None if not math.isfinite(v) else round(v, 12)


@REPORT_SECTIONS.register("spearman", order=25)
def spearman_section(inputs) -> Section | None:
    docs = spearman_docs(inputs.run_dir)
    rows = spearman_rows(inputs.run_dir, docs)
    if not rows:
        return None
    alphas = sorted({doc.get("kwargs", {}).get("alpha", 0.05) for _, doc in docs})
    text = [f"Auxiliary tasks of the spearman weighting: Spearman's r and p of each auxiliary task's labels "
            f"against the main task's, on the main task's training images (class indices in the config's "
            f"order). A task is kept when p < alpha ({', '.join(map(str, alphas))}) with weight |r|, else "
            "dropped (weight 0); the loss is m L_main + (1 - m) sum_k w_k L_k. For a nominal task with more "
            "than two classes, r depends on the order its classes are listed in."]
    if any(math.isfinite(r["binarised at (training median)"]) for r in rows):
        text.append("Continuous lesion characteristics were binarised at their training-split median "
                    "(above = class 1); validation and test values play no part in the cut.")
    return Section("Auxiliary tasks: Spearman correlation with the main task", text=text, table=rows, data=rows)
