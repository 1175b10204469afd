"""The few lines ``medmtl run`` ends with: each arm's test result, each comparison's verdict (with its
level and power) and where the report is. Read from ``report/results.json``, so they are the
report's numbers, not a second computation."""
from __future__ import annotations

import json
import math
from pathlib import Path

# the metric a line shows per task kind
HEADLINE = {"segmentation": "dice", "detection": "box_iou"}


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def run_summary(run_dir: Path) -> str:
    """Text for a terminal or a log: the comparison table, the verdicts and the report's path."""
    report_dir = Path(run_dir) / "report"
    doc = json.loads((report_dir / "results.json").read_text())
    rows = doc.get("rows", [])
    lines = [f"Test split ({len(doc.get('seeds', []))} seed(s); value of seed {doc.get('reference_seed')} "
             "[95% CI], mean ± std over seeds where there are several):"]
    width = max((len(r["arm"]) for r in rows), default=3)
    for r in rows:
        name = HEADLINE.get(r["kind"], "auc")
        m = r["metrics"].get(name)
        if m is None:
            continue
        spread = f"   mean {_fmt(m.get('mean'))} ± {_fmt(m.get('std'))}" if r["n_seeds"] > 1 else ""
        lines.append(f"  {r['arm']:<{width}}  {r['task']}  {name} {_fmt(m.get('ref'))} "
                     f"[{_fmt(m.get('ci_low'))}, {_fmt(m.get('ci_high'))}]{spread}")
    comparisons = ((doc.get("sections") or {}).get("comparisons") or {}).get("table") or []
    if comparisons:
        lines.append("Comparisons:")
        lines += [f"  {c['comparison']} ({c['task']}): {c['verdict']}" for c in comparisons]
    problems = (((doc.get("sections") or {}).get("audit") or {}).get("data") or {}).get("problems")
    if problems:
        lines.append(f"Selection audit: {len(problems)} problems (see the report)")
    lines.append(f"report: {report_dir / 'report.html'}")
    return "\n".join(lines)
