"""The ``medmtl`` command. Each command loads the config, calls one API function and prints."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from medmtl import api
from medmtl.errors import MedmtlError

app = typer.Typer(help="Multi-task and transfer learning for medical image analysis.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Read, check and summarise datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@data_app.command("inspect")
def data_inspect(
    config: Path = typer.Argument(..., help="Experiment YAML file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON document instead of text."),
    progress: bool = typer.Option(True, help="Show decode progress bars."),
) -> None:
    """Counts per split and class, groups, duplicate groups and skipped files, per task."""
    from medmtl.data.inspect import format_text

    try:
        report = api.inspect_data(config, progress=progress and sys.stderr.isatty())
    except (MedmtlError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(json.dumps(report, indent=2) if as_json else format_text(report))


if __name__ == "__main__":  # pragma: no cover
    app()
