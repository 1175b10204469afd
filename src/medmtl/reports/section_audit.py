"""The selection audit (``results/audit.json``): every decision, what it read, what it chose out of
which grid, and every model scored on test; a choice at the edge of its grid is flagged."""
from __future__ import annotations

import json
from collections import Counter

from medmtl.reports._sections import REPORT_SECTIONS, Section


def _reads(reads: list[dict]) -> str:
    by_split: dict[str, list[str]] = {}
    for r in reads:
        by_split.setdefault(r["split"], []).append(r["task"])
    return "; ".join(f"{split}: {', '.join(sorted(set(tasks)))}" for split, tasks in by_split.items())


@REPORT_SECTIONS.register("audit", order=15)
def audit_section(inputs) -> Section | None:
    path = inputs.run_dir / "results" / "audit.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    decisions, scored = doc.get("decisions", []), doc.get("test_scores", [])
    rows = {}
    for d in decisions:
        f = d["for"]
        key = (d["what"], f["arm"], f["task"], _reads(d["reads"]))
        row = rows.setdefault(key, {"decision": d["what"], "arm": f["arm"], "for task": f["task"],
                                    "reads": _reads(d["reads"]), "times": 0, "choices": Counter(), "at grid edge": 0})
        row["times"] += 1
        row["choices"][str(d["chose"])] += 1
        row["at grid edge"] += bool(d.get("edge"))
    table = [{**r, "choices": ", ".join(f"{c} ({n}x)" if n > 1 else c for c, n in r["choices"].most_common(5))}
             for r in rows.values()]
    final = sum(s["final"] for s in scored)
    text = [f"{len(decisions)} decisions; none read a test split. {len(scored)} test scorings, {final} of them of "
            "final models." if not doc.get("problems") else "The audit found problems: " + "; ".join(doc["problems"])]
    edges = sum(r["at grid edge"] for r in table)
    if edges:
        text.append(f"{edges} choices lie at the edge of their grid (its smallest or largest value): the best value "
                    "may lie outside the grid, which is worth widening.")
    return Section("Selection audit", text=text, table=table, data={"problems": doc.get("problems", []),
                                                                    "n_decisions": len(decisions)})
