"""The ``medmtl`` command. Each command loads the config, calls one API function and prints."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from medmtl import api
from medmtl.cli.stats import stats_app
from medmtl.data.inspect import format_text
from medmtl.engine.loop import EPOCH_LOG
from medmtl.errors import MedmtlError
from medmtl.reports.summary import run_summary

app = typer.Typer(help="Multi-task and transfer learning for medical image analysis.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Read, check and summarise datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(stats_app, name="stats")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not sys.stderr.isatty():
        # no progress bars without a terminal: one line per epoch instead, so a logged run is not silent
        logging.getLogger(EPOCH_LOG).setLevel(logging.INFO)


@data_app.command("inspect")
def data_inspect(
    config: Path = typer.Argument(..., help="Experiment YAML file."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON document instead of text."),
    progress: bool = typer.Option(True, help="Show decode progress bars."),
) -> None:
    """Counts per split and class, groups, duplicate groups and skipped files, per task."""
    try:
        report = api.inspect_data(config, progress=progress and sys.stderr.isatty())
    except (MedmtlError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(json.dumps(report, indent=2) if as_json else format_text(report))


@app.command()
def train(
    config: Path = typer.Argument(None, help="Experiment YAML file (not needed with --resume)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    devices: int = typer.Option(None, "--devices", help="Number of devices (GPUs: DDP when > 1)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Train a model: writes the run dir (config, splits, checkpoints, history, metrics)."""
    if config is None and resume is None:
        _fail(MedmtlError("give a CONFIG file, or --resume RUN_DIR"))
    try:
        result = api.train(config, resume=resume, devices=devices, progress=progress and sys.stderr.isatty())
    except (MedmtlError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"run dir: {result.run_dir}")
    typer.echo(f"best epoch {result.best_epoch}: monitor {result.best_monitor:.4f}")
    for task, metrics in result.val_metrics.items():
        typer.echo(f"  {task}: " + "  ".join(f"val_{k}={v:.4f}" for k, v in metrics.items()))


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment YAML with an 'experiment' section (arms to compare)."),
    profile: str = typer.Option(None, "--profile",
                                help="Apply one of the config's profiles ('quick', 'standard', ...) first."),
    quick: bool = typer.Option(False, "--quick", help="The same as --profile quick (a CPU version in minutes)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    workers: int = typer.Option(1, "--workers", min=1,
                                help="Run arms x seeds as this many parallel trials on a local Ray instance."),
    ray_address: str = typer.Option(None, "--ray-address",
                                    help="Run the trials on an existing Ray cluster ('auto' or 'ray://host:10001')."),
    devices: int = typer.Option(None, "--devices", min=1,
                                help="Train each model on this many devices (DDP; data.batch_size is per device)."),
    gpus_per_trial: float = typer.Option(None, "--gpus-per-trial", min=0,
                                         help="GPUs each parallel trial reserves (0.5: two trials per GPU; "
                                              "default 1 when CUDA is present, else 0)."),
) -> None:
    """Run a comparison of strategies: every arm and seed, test scores, results and report."""
    try:
        out = api.run(config, profile=profile, quick=quick, progress=progress and sys.stderr.isatty(),
                      workers=workers, ray_address=ray_address, devices=devices, gpus_per_trial=gpus_per_trial)
    except (MedmtlError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"results: {out / 'results'}")
    if (out / "report" / "results.json").is_file():
        typer.echo(run_summary(out))


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A finished training run."),
    images: list[Path] = typer.Argument(..., help="Image files."),
    task: str = typer.Option(None, "--task", help="Only this task's scores."),
    output: Path = typer.Option(None, "--output", "-o", help="CSV file (default: standard output)."),
) -> None:
    """Per-class scores for image files, as CSV."""
    try:
        table = api.predict(run_dir, images, task=task)
    except (MedmtlError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    if output:
        table.to_csv(output, index=False)
    else:
        typer.echo(table.to_csv(index=False), nl=False)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="An experiment (or training) run dir.")) -> None:
    """Results tables and one self-contained HTML page, written to RUN_DIR/report/."""
    try:
        path = api.report(run_dir)
    except (MedmtlError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"report: {path}")

