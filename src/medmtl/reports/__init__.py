"""Reports: results tables and a self-contained HTML page.

``write_report(run_dir)`` reads the results layout of :mod:`medmtl.evaluation` and writes
``run_dir/report/{results.json,results.csv,results.md,report.html}``; ``write_predictions`` writes
the ``results/predictions.csv`` rows of one finished training run (what the experiment runner
calls for every arm and seed).
"""
from medmtl.reports import (  # noqa: F401  (registers the study sections)
    section_audit,
    section_comparisons,
    section_data,
    section_loto,
    section_reference,
    section_spearman,
    section_training,
    section_tta,
)
from medmtl.reports.predictions import write_predictions
from medmtl.reports.report import write_report

__all__ = ["write_predictions", "write_report"]
