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
from pathlib import Path

from medmtl.errors import ConfigError
from medmtl.grid.execution import prepared, run_trials

log = logging.getLogger("medmtl.grid")


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


def run_arms_on_grid(cfg, run_dir: Path, arms, seeds) -> None:
    """Run every unfinished (arm, seed) as grid trials, wave by wave; raise if any trial failed."""
    from medmtl.grid._expand import Trial

    run_dir = Path(run_dir).resolve()
    base = cfg.model_dump(mode="json")
    for k, wave in enumerate(waves(arms)):
        trials = []
        for arm in wave:
            for seed in seeds:
                if (run_dir / "arms" / arm.name / f"seed{seed}" / "done.json").is_file():
                    continue
                params = {"config": base, "arm": arm.name, "seed": seed, "run_dir": str(run_dir)}
                trials.append(Trial(_trial_id(arm.name, seed), f"{arm.name},seed={seed}",
                                    {"arm": arm.name, "seed": seed}, params))
        if trials:
            log.info("arms wave %d: %d trial(s)", k, len(trials))
        run_trials(trials, run_arm_trial, run_dir / "grid", "arm")


def _trial_id(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}".replace("/", "_")


def run_arm_trial(params: dict, trial_dir: Path) -> dict:
    """One (arm, seed) of an experiment: a top-level function, so Ray can ship it to a worker."""
    from medmtl.experiment import run_arms

    cfg, data = prepared(params["config"], "experiment trial")
    run_dir = Path(params["run_dir"])
    arm = next(a for a in cfg.experiment.arms if a.name == params["arm"])
    # run_arms with the one arm: its source arm (an earlier wave) is found through its done.json
    run_arms(cfg, data, run_dir, _with_sources(cfg.experiment.arms, arm), [params["seed"]])
    done = run_dir / "arms" / arm.name / f"seed{params['seed']}" / "done.json"
    return json.loads(done.read_text())


def _with_sources(arms, arm) -> list:
    """``arm`` preceded by its chain of source arms (finished already, so only read back)."""
    by_name = {a.name: a for a in arms}
    chain = [arm]
    while chain[0].source_arm:
        chain.insert(0, by_name[chain[0].source_arm])
    return chain
