"""``medmtl stats``: statistical tests on a predictions CSV; each command wraps one evaluation.stats call."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer

from medmtl import api
from medmtl._registry import did_you_mean
from medmtl.evaluation.stats import check_binary_labels

stats_app = typer.Typer(help="Statistical tests on prediction files (DeLong AUC CIs and paired tests).",
                        no_args_is_help=True)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@stats_app.command("delong", context_settings={"allow_extra_args": True})
def delong(
    ctx: typer.Context,
    predictions: Path = typer.Argument(..., help="CSV file with one row per case and one column per model's scores."),
    truth: str = typer.Option(..., "--truth", help="Column of binary labels: 0 (control), 1 (case)."),
    scores: list[str] = typer.Option(..., "--scores", help="COL_A [COL_B]: score columns, higher meaning 'case'. "
                                     "With two, the paired DeLong test compares them."),
    group: str = typer.Option(None, "--group", help="Column of group ids (patient or lesion). Each group's scores "
                              "are first averaged (mean) and the test runs on one row per group, because images of "
                              "one patient are not independent cases; a group's truth must not vary."),
    alpha: float = typer.Option(0.05, "--alpha", help="One minus the confidence level of the CIs."),
) -> None:
    """AUC with DeLong 95% CI per score column and, for two columns, the paired DeLong p-value (JSON).

    Prints {"auc_a", "ci_a"} (ci as a lo, hi list) and, with two score columns, also "auc_b", "ci_b" and
    "p_value". A results/predictions.csv holds one arm per row: pivot it to one column per arm first.
    The numbers equal R pROC's ci.auc(method="delong") and roc.test(method="delong", paired=TRUE) on
    roc(truth, score, levels=c(0, 1), direction="<").
    """
    # click options take a fixed number of values, so COL_B after `--scores COL_A` arrives as an extra argument
    columns = [*scores, *ctx.args]
    if len(columns) > 2:
        _fail(f"--scores takes one or two columns (COL_A [COL_B]); got {columns}")
    try:
        table = pd.read_csv(predictions)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        _fail(f"cannot read PREDICTIONS {predictions}: {exc}")
    for option, col in [("--truth", truth), *(("--scores", c) for c in columns), ("--group", group)]:
        if col is not None and col not in table.columns:
            _fail(f"{option} column {col!r} is not in {predictions}; its columns are {list(table.columns)}"
                  f"{did_you_mean(col, table.columns)}")
    try:
        y = check_binary_labels(table[truth].to_numpy(), f"--truth column {truth!r}")
    except ValueError as exc:
        _fail(str(exc))
    for col in columns:
        if not pd.api.types.is_numeric_dtype(table[col]) or table[col].isna().any():
            _fail(f"--scores column {col!r} must be numeric with no missing values")
    try:
        doc = api.delong(y, table[columns[0]].to_numpy(float),
                         table[columns[1]].to_numpy(float) if len(columns) == 2 else None,
                         groups=table[group].to_numpy() if group else None, alpha=alpha)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(doc))
