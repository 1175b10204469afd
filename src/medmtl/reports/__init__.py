"""Reports: results tables and a self-contained HTML page.

``write_report(run_dir)`` reads the results layout of :mod:`medmtl.evaluation` and writes
``run_dir/report/{results.json,results.csv,results.md,report.html}``; ``write_predictions`` writes
the ``results/predictions.csv`` rows of one finished training run (what the experiment runner
calls for every arm and seed).
"""
from medmtl.reports._stats import bootstrap_auc_ci, paired_bootstrap_auc_test
from medmtl.reports.predictions import write_predictions
from medmtl.reports.report import write_report

__all__ = ["bootstrap_auc_ci", "paired_bootstrap_auc_test", "write_predictions", "write_report"]
