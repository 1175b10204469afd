"""An experiment's arms x seeds as a grid: ``medmtl run --workers N`` / ``--ray-address``.

Arms that start from another arm (``source_arm``) need that arm's model first, so the arms are run
in waves: wave 0 holds the arms without a source arm, wave k those whose source arm is in an earlier
wave. Within a wave every (arm, seed) is one trial of :func:`medmtl.grid.run_grid`. A trial writes
the arm's usual ``arms/<arm>/seed<k>/done.json``, so the experiment runner afterwards finds every arm
finished and only collects its predictions; a finished arm is never run again, by either path.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from medmtl.errors import ConfigError, MedmtlError

log = logging.getLogger("medmtl.grid")
_DATA: dict[str, object] = {}   # prepared data per config, kept per worker process across trials


def waves(arms) -> list[list]:
    """Arms grouped so that each arm's ``source_arm`` lies in an earlier group."""
    placed: dict[str, int] = {}
    remaining = list(arms)
    out: list[list] = []
    while remaining:
        wave = [a for a in remaining if not a.source_arm or a.source_arm in placed]
        if not wave:
            raise ConfigError(f"arms {[a.name for a in remaining]} name source arms that never run before them: "
                              f"{sorted({a.source_arm for a in remaining})}")
        for a in wave:
            placed[a.name] = len(out)
        out.append(wave)
        remaining = [a for a in remaining if a.name not in placed]
    return out


def run_arms_on_grid(cfg, run_dir: Path, arms, seeds, *, workers: int, ray_address: str | None,
                     progress: bool = True) -> None:
    """Run every unfinished (arm, seed) as grid trials, wave by wave; raise if any trial failed."""
    from medmtl.grid import run_grid
    from medmtl.grid._expand import Trial

    run_dir = Path(run_dir).resolve()
    base = cfg.model_dump(mode="json")
    cpus = max(1, (os.cpu_count() or 1) // workers) if ray_address is None else 1
    for k, wave in enumerate(waves(arms)):
        trials = []
        for arm in wave:
            for seed in seeds:
                if (run_dir / "arms" / arm.name / f"seed{seed}" / "done.json").is_file():
                    continue
                params = {"config": base, "arm": arm.name, "seed": seed, "run_dir": str(run_dir)}
                trials.append(Trial(_trial_id(arm.name, seed), f"{arm.name},seed={seed}",
                                    {"arm": arm.name, "seed": seed}, params))
        if not trials:
            continue
        log.info("arms wave %d: %d trial(s) on %s", k, len(trials), ray_address or f"{workers} local workers")
        records = run_grid(trials, run_arm_trial, run_dir / "grid", workers=workers, ray_address=ray_address,
                           cpus_per_trial=cpus, progress=progress)
        failed = [r for r in records if r["status"] == "failed"]
        if failed:
            raise MedmtlError(f"{len(failed)} arm trial(s) failed: " + "; ".join(
                f"{r['name']} (see {r['trial_dir']}/error.txt)" for r in failed) + ". Run again to retry them; "
                "finished arms are kept.")


def _trial_id(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}".replace("/", "_")


def run_arm_trial(params: dict, trial_dir: Path) -> dict:
    """One (arm, seed) of an experiment: a top-level function, so Ray can ship it to a worker."""
    from medmtl.config import parse_config
    from medmtl.experiment import run_arms

    cfg = parse_config(params["config"], "experiment trial")
    run_dir = Path(params["run_dir"])
    arm = next(a for a in cfg.experiment.arms if a.name == params["arm"])
    key = json.dumps(params["config"], sort_keys=True)
    if key not in _DATA:
        from medmtl.data.pipeline import prepare

        _DATA.clear()   # one config at a time: prepared data of a finished experiment is not kept
        _DATA[key] = prepare(cfg, progress=False)
    # run_arms with the one arm: its source arm (an earlier wave) is found through its done.json
    chain = _with_sources(cfg.experiment.arms, arm)
    run_arms(cfg, _DATA[key], run_dir, chain, [params["seed"]])
    done = run_dir / "arms" / arm.name / f"seed{params['seed']}" / "done.json"
    return json.loads(done.read_text())


def _with_sources(arms, arm) -> list:
    """``arm`` preceded by its chain of source arms (finished already, so only read back)."""
    by_name = {a.name: a for a in arms}
    chain = [arm]
    while chain[0].source_arm:
        chain.insert(0, by_name[chain[0].source_arm])
    return chain
