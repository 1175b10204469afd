"""The self-contained HTML page: inline CSS, figures as base64 PNG data URIs, no external request."""
from __future__ import annotations

import datetime as _dt
from html import escape

from medmtl.reports import _sections, _tables
from medmtl.reports._figures import Figure
from medmtl.reports._layout import Inputs

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f4f4f4}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
figure{display:inline-block;margin:.8em 1em .8em 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#444;max-width:60em}
.missing{background:#fff7e0;border-left:4px solid #e0a800;padding:.4em .8em;margin:.4em 0}
.small{font-size:.85em;color:#555}
"""

SECTIONS = [
    ("roc", "ROC curves per task", "roc"),
    ("curves", "Training curves", "curves"),
    ("confusion", "Confusion matrices", "confusion"),
    ("tsne", "t-SNE of trunk features", "tsne"),
    ("gradcam", "Grad-CAM on test cases", "gradcam"),
]


def _figure(fig: Figure, n: int) -> str:
    return (f'<figure class="fig-{fig.kind}" data-kind="{fig.kind}" id="fig-{fig.kind}-{n}">'
            f'<img alt="{escape(fig.title)}" src="data:image/png;base64,{fig.png}">'
            f"<figcaption><b>Figure {n}. {escape(fig.title)}.</b> {escape(fig.caption)}</figcaption></figure>")


def _missing(items: list[str]) -> str:
    return "".join(f'<p class="missing">{escape(m)}</p>' for m in items)


def comparison_table(inputs: Inputs, rows: list[dict]) -> str:
    if not rows:
        return _missing(["No test-split metrics in results/metrics.json or results/predictions.csv."])
    names = _tables.metric_names(rows)
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    out = [f'<table id="comparison"><thead><tr><th>arm</th><th>task</th>{head}<th>p (AUC)</th>'
           + "<th>n seeds</th><th>seeds</th></tr></thead><tbody>"]
    for r in rows:
        cells = "".join(f'<td class="num" title="{escape(r["metrics"][n]["ci_method"]) if n in r["metrics"] else ""}">'
                        f"{escape(_tables.format_metric(r['metrics'][n])) if n in r['metrics'] else ''}</td>"
                        for n in names)
        auc = r["metrics"].get("auc")
        p_title = escape(auc.get("p_method", "")) if auc else ""
        out.append(f"<tr><td>{escape(r['arm'])}</td><td>{escape(r['task'])}</td>{cells}"
                   f'<td class="num" title="{p_title}">{escape(_tables.format_p(auc))}</td>'
                   f"<td>{r['n_seeds']}</td><td>{escape(', '.join(map(str, r['seeds'])))}</td></tr>")
    out.append("</tbody></table>")
    methods = _tables.method_lines(rows)
    out.append("<p class=\"small\">Cells: mean ± std over seeds · reference-seed value [95% CI] "
               "(one seed: value [95% CI]); the CI is the test-set uncertainty of one model, the std the "
               "spread over training seeds. "
               f"Reference seed: {inputs.reference_seed}; p-values: AUC of each arm against "
               f"<b>{escape(inputs.arms[0])}</b> on the test images both scored (matched by id).</p>")
    out.append("<ul class=\"small\">" + "".join(f"<li>{escape(m)}</li>" for m in methods) + "</ul>")
    return "".join(out)


def render(inputs: Inputs, rows: list[dict], figures: list[Figure], sections: dict | None = None) -> str:
    """The page; every note of ``inputs`` is listed at the top and again in its section."""
    notes = {s: [m for sec, m in inputs.notes if sec == s] for s, _, _ in SECTIONS}
    general = [m for sec, m in inputs.notes if sec not in notes]
    n = 0
    body = [f"<h1>medmtl report: {escape(inputs.run_dir.name)}</h1>",
            (f'<p class="small">Run dir <code>{escape(str(inputs.run_dir))}</code> · arms '
             f"{escape(', '.join(inputs.arms))} · seeds {escape(', '.join(map(str, inputs.seeds)) or 'none')} · "
             f"generated {_dt.datetime.now().isoformat(timespec='seconds')}</p>")]
    all_missing = general + [f"{title}: {m}" for s, title, _ in SECTIONS for m in notes[s]]
    body.append("<h2 id=\"missing\">Missing inputs and skipped figures</h2>")
    body.append(_missing(all_missing) if all_missing else "<p>Nothing is missing: every input was found.</p>")
    body.append("<h2 id=\"table\">Comparison table (test split)</h2>")
    body.append(comparison_table(inputs, rows))
    counter = [len(figures)]

    def numbered(fig):  # study figures are numbered after the standard ones
        counter[0] += 1
        return _figure(fig, counter[0])

    body.extend(_sections.html(sections or {}, numbered))
    for section, title, kind in SECTIONS:
        body.append(f'<h2 id="{section}">{escape(title)}</h2>')
        figs = [f for f in figures if f.kind == kind]
        for f in figs:
            n += 1
            body.append(_figure(f, n))
        if not figs:
            body.append(_missing(notes[section] or [f"No {title.lower()}: no input for them."]))
        elif notes[section]:
            body.append(_missing(notes[section]))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>medmtl report: {escape(inputs.run_dir.name)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
