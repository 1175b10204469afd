"""Study-specific parts of the report (a registry): each adds a table, text or figures when its input
is in the run dir, and says nothing otherwise.

A section is a function ``(inputs) -> Section | None``, registered with ``@REPORT_SECTIONS.register(
name, order=N)``; sections appear in ``order`` after the comparison table, in ``results.md``, in the
HTML page and under ``sections.<name>`` of ``results.json``. Study modules (the leakage guard's counts,
the published reference values, Spearman weights, LOTO ranks) plug in here instead of growing
``report.py``; :mod:`medmtl.reports` imports every ``section_*`` module, which registers it.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from html import escape

import numpy as np

from medmtl._registry import Registry
from medmtl.reports._layout import Inputs


@dataclass(frozen=True)
class SectionInfo:
    """``order``: where the section stands on the page (smaller first)."""

    order: int = 50


REPORT_SECTIONS: Registry = Registry("report section", SectionInfo)
log = logging.getLogger("medmtl.reports")


@dataclass
class Section:
    """``table``: rows (dicts with the same keys) shown as a table; ``text``: paragraphs before it;
    ``figures``: :class:`medmtl.reports._figures.Figure` objects; ``data``: what goes to results.json."""

    title: str
    text: list[str] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    figures: list = field(default_factory=list)
    data: object = None


def build_sections(inputs: Inputs) -> dict[str, Section]:
    """Every registered section that has input in this run dir, in order.

    A section that fails is reported as a note and left out: one broken study table must not cost
    the whole report.
    """
    out = {}
    for name in sorted(REPORT_SECTIONS.list(), key=lambda n: (REPORT_SECTIONS.meta(n).order, n)):
        try:
            section = REPORT_SECTIONS.get(name)(inputs)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a visible note
            log.exception("report section %s failed", name)
            inputs.note("sections", f"section {name!r} not written: {type(exc).__name__}: {exc}")
            continue
        if section is not None:
            out[name] = section
    return out


def seed_values(metrics: dict | None, arm: str, task: str, split: str, metric: str) -> list[float]:
    """The finite per-seed values of ``metric`` in ``metrics.json`` (``{arm: {seed: {task: {split:
    {metric: value}}}}}``), in seed order of the file."""
    out = []
    for per_task in ((metrics or {}).get(arm) or {}).values():
        v = ((per_task.get(task) or {}).get(split) or {}).get(metric)
        if v is not None and math.isfinite(float(v)):
            out.append(float(v))
    return out


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def markdown(sections: dict[str, Section]) -> list[str]:
    lines = []
    for s in sections.values():
        lines += ["", f"## {s.title}", ""]
        lines += [*(t + "\n" for t in s.text)]
        if s.table:
            keys = list(s.table[0])
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in s.table]
    return lines


def html(sections: dict[str, Section], figure_html) -> list[str]:
    """``figure_html(fig) -> str`` renders one figure (the page numbers them)."""
    out = []
    for name, s in sections.items():
        out.append(f'<h2 id="section-{escape(name)}">{escape(s.title)}</h2>')
        out += [f"<p>{escape(t)}</p>" for t in s.text]
        if s.table:
            keys = list(s.table[0])
            head = "".join(f"<th>{escape(k)}</th>" for k in keys)
            body = "".join("<tr>" + "".join(f'<td class="num">{escape(_cell(r.get(k)))}</td>' for k in keys)
                           + "</tr>" for r in s.table)
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        out += [figure_html(f) for f in s.figures]
    return out


def json_data(sections: dict[str, Section]) -> dict:
    return {name: json.loads(json.dumps({"title": s.title, "text": s.text, "table": s.table, "data": s.data},
                                        default=_json_default)) for name, s in sections.items()}


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
