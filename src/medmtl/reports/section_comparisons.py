"""Does multi-task (or transfer) learning help? Pairs of arms tested on the same test cases.

Per pair and evaluated task: the AUC of both arms on the reference seed's test cases they share,
DeLong's paired test (binary tasks; a paired bootstrap otherwise) with Holm's correction over all
rows of the table, and with several seeds the seed means, the 2-std rule and Wilcoxon's signed-rank
test over seeds (Holm-corrected across tasks). The verdict column states the outcome in words, so a
comparison where multi-task learning does not help says so.
"""
from __future__ import annotations

import math

import numpy as np

from medmtl.evaluation import stats
from medmtl.evaluation.stats import holm, significant_by_2std, wilcoxon_holm
from medmtl.reports._layout import CLASSIFICATION
from medmtl.reports._sections import REPORT_SECTIONS, Section
from medmtl.reports._tables import _seed_metrics

ALPHA = 0.05


def default_pairs(config: dict) -> list[tuple[str, str]]:
    """Every multi-task arm against every single-task arm of the config (in arm order)."""
    arms = ((config or {}).get("experiment") or {}).get("arms") or []
    multi = [a["name"] for a in arms if a.get("strategy") in ("mtl", "joint")]
    single = [a["name"] for a in arms if a.get("strategy") in ("stl", "sequential", "finetune", "scratch")]
    return [(m, s) for m in multi for s in single]


def _seed_aucs(inputs, arm, task) -> dict[int, float]:
    """{seed: test AUC} of one arm and task, as the comparison table reads them."""
    values = {s: m.get("auc") for s, m in _seed_metrics(inputs, arm, task).items()}
    return {s: v for s, v in values.items() if v is not None and math.isfinite(v)}


def _verdict(a: str, b: str, diff: float, p: float) -> str:
    if not math.isfinite(p):
        return "not tested"
    if p >= ALPHA:
        return f"no significant difference between {a} and {b}"
    return f"{a} better than {b}" if diff > 0 else f"{a} worse than {b}"


@REPORT_SECTIONS.register("comparisons", order=25)
def comparisons_section(inputs) -> Section | None:
    exp = (inputs.config or {}).get("experiment") or {}
    pairs = [tuple(p) for p in exp.get("comparisons") or []] or default_pairs(inputs.config)
    if not pairs or inputs.predictions is None:
        return None
    ref = inputs.reference_seed
    rows = []
    for a, b in pairs:
        for task, info in inputs.tasks.items():
            if info.kind not in CLASSIFICATION:
                continue
            pa, pb = inputs.task_predictions(a, ref, task), inputs.task_predictions(b, ref, task)
            if pa is None or pb is None:
                continue
            pa, pb = pa.drop_duplicates("id").set_index("id"), pb.drop_duplicates("id").set_index("id")
            ids = pa.index.intersection(pb.index)
            y = pa.loc[ids, "y_true"].to_numpy(int)
            sa, sb = inputs.scores(pa.loc[ids], task), inputs.scores(pb.loc[ids], task)
            binary = sa.shape[1] == 2
            auc_a, auc_b = stats.auc_fast(y, sa), stats.auc_fast(y, sb)
            if binary and np.bincount(y, minlength=2).min() >= 2:
                p, how = float(stats.delong_test(y, sa[:, 1].astype(float), sb[:, 1].astype(float))[1]), "DeLong paired"
            else:
                p, how = stats.paired_bootstrap_test(y, sa, sb, n_boot=1000, random_state=0), "paired bootstrap"
            va, vb = _seed_aucs(inputs, a, task), _seed_aucs(inputs, b, task)
            common = sorted(set(va) & set(vb))
            row = {"comparison": f"{a} vs {b}", "task": task, "cases": f"{len(ids)} "
                   f"{'groups' if info.evaluate_at == 'group' else 'images'}",
                   "AUC a": auc_a, "AUC b": auc_b, "difference": auc_a - auc_b,
                   "p": p, "test": how, "seeds": len(common)}
            if len(common) >= 2:
                xa, xb = [va[s] for s in common], [vb[s] for s in common]
                row.update({"mean a": float(np.mean(xa)), "mean b": float(np.mean(xb)),
                            "2-std rule": "significant" if significant_by_2std(xa, xb) else "not significant",
                            "_diffs": [x - z for x, z in zip(xa, xb)]})
            rows.append(row)
    if not rows:
        return None
    for row, adj in zip(rows, _holm([r["p"] for r in rows])):
        row["p (Holm)"] = adj
        a, b = row["comparison"].split(" vs ")
        row["verdict"] = _verdict(a, b, row["difference"], adj)
    seeded = {f"{r['comparison']} / {r['task']}": r.pop("_diffs") for r in rows if "_diffs" in r}
    wilcoxon = {}
    if seeded:
        wilcoxon = wilcoxon_holm(seeded)
        for r in rows:
            w = wilcoxon.get(f"{r['comparison']} / {r['task']}")
            if w:
                r["Wilcoxon p (Holm)"] = w["p_holm"]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k) for k in keys} for r in rows]
    text = [f"Test split, seed {ref}: 'AUC a' is the first arm of each comparison, 'AUC b' the second; "
            "p is two-sided, Holm-corrected over the rows of this table. With several seeds, the 2-std "
            "rule calls a difference significant when it exceeds twice the larger std over seeds, and "
            "Wilcoxon's signed-rank test runs over the seeds (Holm-corrected across rows)."]
    return Section("Comparisons: does it help?", text=text, table=rows, data={"rows": rows, "wilcoxon": wilcoxon})


def _holm(ps):
    arr = np.array([p if math.isfinite(p) else 1.0 for p in ps])
    out = holm(arr) if len(arr) else arr
    return [float(v) if math.isfinite(p) else math.nan for v, p in zip(out, ps)]
