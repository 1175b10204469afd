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
from medmtl.protocols.comparison import compared_pairs
from medmtl.reports._layout import CLASSIFICATION
from medmtl.reports._sections import REPORT_SECTIONS, Section
from medmtl.reports._tables import _seed_metrics

ALPHA = 0.05
MIN_SEEDS = 3        # fewer seeds compare two trained models, not two methods


def default_pairs(config: dict) -> list[tuple[str, str]]:
    """Every multi-task arm against every single-task arm of the config (in arm order)."""
    arms = ((config or {}).get("experiment") or {}).get("arms") or []
    return compared_pairs([(a["name"], a.get("strategy")) for a in arms])


def _seed_aucs(inputs, arm, task) -> dict[int, float]:
    """{seed: test AUC} of one arm and task, as the comparison table reads them."""
    values = {s: m.get("auc") for s, m in _seed_metrics(inputs, arm, task).items()}
    return {s: v for s, v in values.items() if v is not None and math.isfinite(v)}


def _verdict(a: str, b: str, diff: float, p: float, broken: str | None = None, level: str = "model",
             detectable: float = math.nan, seeds: int = 1, ref=None, seed_rule: str | None = None,
             seed_mean: float = math.nan) -> str:
    """The outcome in words, with what it is about: two trained models (fewer than ``MIN_SEEDS``
    seeds) or two methods, and the smallest difference the comparison could have found."""
    if broken:
        return f"degenerate, no verdict: {broken}"
    if not math.isfinite(p):
        return "not tested"
    if p >= ALPHA:
        out = f"no significant difference between {a} and {b}"
        if math.isfinite(detectable) and abs(diff) < detectable:
            out += f" (underpowered: only differences of {detectable:.3f} AUC or more could be detected)"
    else:
        out = f"{a} better than {b}" if diff > 0 else f"{a} worse than {b}"
    if level == "model":
        out += (f"; this compares the two models trained with seed {ref}, not the two methods "
                f"({seeds} seed{'s' if seeds != 1 else ''}; a verdict on the methods needs {MIN_SEEDS})")
    elif seed_rule is not None:
        out += (f" (seed {ref}); over the {seeds} seeds the mean difference is {seed_mean:+.3f}, "
                f"{seed_rule} by the 2-std rule")
    return out


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
            groups = pa.loc[ids, "group"].astype(str).to_numpy() if "group" in pa.columns else None
            auc_a, auc_b = stats.auc_fast(y, sa), stats.auc_fast(y, sb)
            broken = stats.degenerate(y, sa) or stats.degenerate(y, sb)
            if broken:
                p, sd, how = math.nan, math.nan, f"none: {broken}"
            else:
                p, sd, how = stats.auc_difference_test(y, sa, sb, groups, n_boot=1000)
            va, vb = _seed_aucs(inputs, a, task), _seed_aucs(inputs, b, task)
            common = sorted(set(va) & set(vb))
            diffs = [va[s] - vb[s] for s in common]
            row = {"comparison": f"{a} vs {b}", "task": task, "cases": f"{len(ids)} "
                   f"{'groups' if info.evaluate_at == 'group' else 'images'}",
                   "AUC a": auc_a, "AUC b": auc_b, "difference": auc_a - auc_b,
                   "p": p, "test": how, "seeds": len(common),
                   "level": "method" if len(common) >= MIN_SEEDS else "model",
                   "detectable difference": stats.detectable_difference(sd, diffs if len(common) >= 2 else None),
                   "_degenerate": broken}
            if len(common) >= 2:
                xa, xb = [va[s] for s in common], [vb[s] for s in common]
                row.update({"mean a": float(np.mean(xa)), "mean b": float(np.mean(xb)),
                            "2-std rule": "significant" if significant_by_2std(xa, xb) else "not significant",
                            "_diffs": diffs})
            rows.append(row)
    if not rows:
        return None
    for row, adj in zip(rows, _holm([r["p"] for r in rows])):
        row["p (Holm)"] = adj
        a, b = row["comparison"].split(" vs ")
        row["verdict"] = _verdict(a, b, row["difference"], adj, row.pop("_degenerate"), row["level"],
                                  row["detectable difference"], row["seeds"], ref, row.get("2-std rule"),
                                  row.get("mean a", math.nan) - row.get("mean b", math.nan))
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
            "Wilcoxon's signed-rank test runs over the seeds (Holm-corrected across rows). Where images "
            "share a patient, the paired test resamples whole patients (DeLong assumes independent cases). "
            "'detectable difference' is the smallest AUC difference this comparison finds with 80% power "
            "(two-sided, 5%), from the test cases' sampling error and, with several seeds, their spread. "
            f"'level': 'model' with fewer than {MIN_SEEDS} seeds (two trained models are compared, not two "
            "methods), 'method' otherwise. A model whose scores are constant, or cases of one class, get "
            "no verdict."]
    return Section("Comparisons: does it help?", text=text, table=rows, data={"rows": rows, "wilcoxon": wilcoxon})


def _holm(ps):
    arr = np.array([p if math.isfinite(p) else 1.0 for p in ps])
    out = holm(arr) if len(arr) else arr
    return [float(v) if math.isfinite(p) else math.nan for v, p in zip(out, ps)]
