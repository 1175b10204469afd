"""``write_report``: the results tables and the self-contained HTML page of one run directory."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from medmtl.errors import MedmtlError
from medmtl.reports import _figures, _html, _sections, _tables
from medmtl.reports import _model_figures as mf
from medmtl.reports._layout import model_run, read_inputs
from medmtl.reports.predictions import load_split

log = logging.getLogger("medmtl.reports")


def write_report(run_dir: str | Path, *, tsne: bool = True, gradcam: bool = True, max_images: int = 300,
                 n_boot: int = 1000) -> Path:
    """Write ``run_dir/report/``: ``results.json``, ``results.csv``, ``results.md`` and ``report.html``.

    ``run_dir`` follows the results layout of :mod:`medmtl.evaluation` (``config.yaml``,
    ``results/predictions.csv``, ``results/metrics.json``, ``arms/<arm>/seed<k>/``); a plain
    training run dir works too (one arm, curves and model figures only). Any input may be absent:
    the page then says which figure is missing and why.

    The page holds the comparison table (per arm x task on the test split: mean ± std over seeds,
    the reference seed's value with a 95% CI, the AUC p-value against the first arm, the seeds),
    ROC curves per task (one curve per arm; test split, reference seed = seed 0 or the smallest;
    multiclass: macro one-vs-rest), training curves per arm (``history.csv``), confusion matrices
    per arm x task (argmax; test split, reference seed), t-SNE of the trunk's features after each
    stage, and Grad-CAM overlays of test images per classification task. The last two use the
    first arm's reference-seed checkpoint and its test split rebuilt from its config.

    Args:
        run_dir: the experiment's (or a training run's) directory.
        tsne: draw the t-SNE figures.
        gradcam: draw the Grad-CAM figures.
        max_images: at most this many test images in the t-SNE (a seeded sample).
        n_boot: bootstrap replicates for the CIs and the bootstrap p-values.

    Returns:
        Path of ``report.html``.

    Raises:
        MedmtlError: ``run_dir`` is not a directory or holds no results.
    """
    start = time.perf_counter()
    inputs = read_inputs(Path(run_dir))
    if not inputs.arms:
        raise MedmtlError(f"report: {run_dir} names no arm in its results files")
    out_dir = inputs.run_dir / "report"
    rows = _tables.summarise(inputs, n_boot=n_boot)
    figures = _figures.roc_figures(inputs) + _figures.curve_figures(inputs) + _figures.confusion_figures(inputs)
    figures += _model_figures(inputs, tsne, gradcam, max_images)
    sections = _sections.build_sections(inputs)
    # the tables come after the figures so that their notes list every missing input too
    _tables.write_tables(inputs, rows, out_dir, sections)
    path = out_dir / "report.html"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(_html.render(inputs, rows, figures, sections), encoding="utf-8")
    tmp.replace(path)
    log.info("report written to %s in %.1f s", path, time.perf_counter() - start)
    return path


def _model_figures(inputs, tsne: bool, gradcam: bool, max_images: int) -> list:
    if not tsne:
        inputs.note("tsne", "t-SNE not requested (tsne=False)")
    if not gradcam:
        inputs.note("gradcam", "Grad-CAM not requested (gradcam=False)")
    wanted = [k for k, on in (("tsne", tsne), ("gradcam", gradcam)) if on]
    if not wanted:
        return []
    arm, seed = inputs.arms[0], inputs.reference_seed
    seed_dir = inputs.arm_dirs.get(arm, {}).get(seed)
    run = model_run(seed_dir) if seed_dir is not None else None
    why = None
    if seed_dir is None:
        why = f"no run dir arms/{arm}/seed{seed}/ for the first arm's reference seed"
    elif run is None:
        why = (f"{seed_dir / 'checkpoints' / 'best.ckpt'} is absent and no done.json names a run with one "
               "(the first arm's reference-seed model)")
    elif not (run / "config.yaml").is_file():
        why = f"{run / 'config.yaml'} is absent, so the test split cannot be rebuilt"
    if why:
        for k in wanted:
            inputs.note(k, f"not drawn: {why}")
        return []

    try:
        cfg, model, specs, dataset = load_split(run, "test")
    except (MedmtlError, FileNotFoundError, KeyError) as exc:
        for k in wanted:
            inputs.note(k, f"not drawn: the test split of {run} could not be rebuilt: {exc}")
        return []
    ref = (cfg, model, specs, dataset, arm, seed)
    figures = []
    if tsne:
        try:
            figures += mf.tsne_figures(ref, max_images)
        except ValueError as exc:
            inputs.note("tsne", f"not drawn: {exc}")
    if gradcam:
        cams = mf.gradcam_figures(ref)
        figures += cams
        if not cams:
            inputs.note("gradcam", f"not drawn: arm {arm} has no classification task with test images")
    return figures
