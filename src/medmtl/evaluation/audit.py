"""The selection audit: every decision a run takes, what it read, and every time a test split is scored.

A decision is a choice among candidates (best epoch, learning rate, SVM C, LOTO combination, CV
split) made on some labelled data; the audit records which tasks and splits it read, what it chose
out of which grid, and whether the choice sits at the grid's edge (the grid may be too narrow). A
test score records which model was scored and whether it is final (reported). The run fails when
a decision read a test split, read a task it must not (a LOTO target's related tasks and the tasks
holding copies of its images), or when a model that is not final was scored on test.

Written to ``RUN_DIR/results/audit.json``::

    {"decisions": [{"what", "for": {"arm", "seed", "task"}, "reads": [{"task", "split"}], "chose",
                    "grid", "edge", "forbidden"}],
     "test_scores": [{"model", "seed", "task", "final", "why"}],
     "problems": [...]}
"""
from __future__ import annotations

import math
from numbers import Number
from pathlib import Path

from medmtl.errors import MedmtlError
from medmtl.evaluation.results import write_json


class AuditError(MedmtlError):
    """A decision saw what it must not, or a non-final model was scored on test; names the decision."""


def reads(tasks, split: str) -> list[dict]:
    return [{"task": t, "split": split} for t in tasks]


def decision(what: str, *, arm: str, seed: int, task: str, reads: list[dict], chose, grid=None,
             forbidden=(), **extra) -> dict:
    """One decision. ``edge``: a numeric choice at the smallest or largest value of a grid of at least
    three (the best may lie outside it); ``forbidden``: tasks this decision must not read."""
    doc = {"what": what, "for": {"arm": arm, "seed": seed, "task": task}, "reads": list(reads), "chose": chose}
    if grid is not None:
        grid = list(grid)
        doc["grid"] = grid
        doc["edge"] = _at_edge(chose, grid)
    if forbidden:
        doc["forbidden"] = sorted(forbidden)
    return {**doc, **extra}


def _at_edge(chose, grid: list) -> bool:
    numeric = [g for g in grid if isinstance(g, Number) and not isinstance(g, bool) and math.isfinite(g)]
    if len(numeric) < 3 or len(numeric) != len(grid) or chose not in numeric:
        return False
    return chose in (min(numeric), max(numeric))


def test_score(model: str, seed: int, task: str, *, final: bool, why: str) -> dict:
    return {"model": model, "seed": seed, "task": task, "final": final, "why": why}


def problems(audit: dict) -> list[str]:
    """Every rule the audit breaks, each naming the decision or the scored model."""
    out = []
    for d in audit.get("decisions", []):
        who = f"{d['what']} for {d['for']}"
        for r in d["reads"]:
            if r["split"] == "test":
                out.append(f"{who} read the test labels of {r['task']!r}")
            if r["task"] in set(d.get("forbidden", ())):
                out.append(f"{who} read {r['task']!r} ({r['split']}), a task related to its target or holding "
                           "copies of its images")
    for s in audit.get("test_scores", []):
        if not s["final"]:
            out.append(f"test split of {s['task']!r} scored for {s['model']!r} (seed {s['seed']}), which is not a "
                       f"final model ({s['why']})")
    return out


def merge(*audits: dict) -> dict:
    out = {"decisions": [], "test_scores": []}
    for a in audits:
        out["decisions"] += a.get("decisions", [])
        out["test_scores"] += a.get("test_scores", [])
    return out


def write_audit(run_dir: Path, audit: dict) -> Path:
    """``results/audit.json`` with its problems; raises :class:`AuditError` when there are any (the
    file is written first, so the refused decisions can be read)."""
    found = problems(audit)
    path = Path(run_dir) / "results" / "audit.json"
    write_json(path, {**audit, "problems": found})
    if found:
        raise AuditError(f"the selection audit refused this run ({path}): " + "; ".join(found))
    return path
