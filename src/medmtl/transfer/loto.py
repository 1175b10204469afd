"""Leave-one-task-out (LOTO) model selection and transfer (Mormont et al., IEEE JBHI 2020).

Selecting pre-training hyper-parameters on the task one transfers to would leak it into the
choice; LOTO instead scores every combination on tasks the model never saw and picks, for a
target, the combination that ranks best on the *other* tasks. Trials are resumable: a trial
with a ``result.json`` is never trained again.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from medmtl.errors import ConfigError

log = logging.getLogger("medmtl.transfer")


def left_out_groups(pool: list[str], related: list[list[str]]) -> list[list[str]]:
    """Related tasks form one group; every other pool task is a group of its own."""
    groups, seen = [], set()
    for group in related:
        unknown = sorted(set(group) - set(pool))
        if unknown:
            raise ConfigError(f"loto.related: {unknown} are not in loto.pool {pool}")
        groups.append(list(group))
        seen |= set(group)
    return groups + [[t] for t in pool if t not in seen]


def combinations(grid: dict[str, list]) -> list[dict]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] or [{}]


def combo_id(combo: dict) -> str:
    text = json.dumps(combo, sort_keys=True)
    readable = ",".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(combo.items())) or "default"
    return f"{readable}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def rank_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Rank of each combination per task (1 = best mean validation AUC over seeds)."""
    mean = scores.groupby(["task", "combo"])["auc"].mean().unstack("task")
    return mean.rank(ascending=False, method="average")


def choose(ranks: pd.DataFrame, target: str) -> str:
    """The combination with the best average rank over every task except ``target``."""
    others = [t for t in ranks.columns if t != target]
    if not others:
        raise ConfigError("LOTO needs at least two left-out tasks to rank combinations")
    return str(ranks[others].mean(axis=1).idxmin())


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def run_loto(cfg, data, run_dir: Path) -> dict:
    """Run the LOTO protocol of ``cfg.loto``; writes ``run_dir/loto/`` and returns the summary."""
    from medmtl.config.schema import ArmConfig
    from medmtl.evaluation.predictions import prediction_rows
    from medmtl.transfer.strategies import ArmContext, _lr_grid, _train, svm_transfer

    lc = cfg.loto
    unknown = sorted(set(lc.pool) - set(data.tasks))
    if unknown:
        raise ConfigError(f"loto.pool: {unknown} are not declared tasks")
    out = Path(run_dir) / "loto"
    groups = left_out_groups(lc.pool, lc.related)
    combos = {combo_id(c): c for c in combinations(lc.grid)}
    arm = ArmConfig(name="loto", strategy="joint", svm_c=lc.svm_c, lrs=lc.lrs)
    rows, models = [], {}
    for group in groups:
        rest = [t for t in lc.pool if t not in group]
        for cid, combo in combos.items():
            for seed in lc.seeds:
                trial = out / "trials" / "+".join(group) / cid / f"seed{seed}"
                ctx = ArmContext(cfg, arm, data, seed, trial / "model")
                result_file = trial / "result.json"
                if result_file.is_file():
                    result = json.loads(result_file.read_text())
                else:
                    model_dir, _ = _train(ctx, rest, trial / "model", extra=combo)
                    result = {"model": str(model_dir), "auc": {}}
                    for task in group:
                        scores, _, _ = svm_transfer(ctx, task, str(model_dir / "checkpoints" / "best.ckpt"),
                                                    splits=("val",))
                        d = scores["val"][task]
                        from medmtl.metrics import auc

                        result["auc"][task] = auc(d["y"], d["p"])
                    trial.mkdir(parents=True, exist_ok=True)
                    _write_json(result_file, result)
                models[("+".join(group), cid, seed)] = result["model"]
                rows += [{"task": t, "combo": cid, "seed": seed, "auc": a} for t, a in result["auc"].items()]
    scores = pd.DataFrame(rows)
    ranks = rank_table(scores)
    summary = {"groups": groups, "combinations": combos, "ranks": ranks.to_dict(), "targets": {}}
    preds = []
    for group in groups:
        for target in group:
            chosen = choose(ranks, target)
            summary["targets"][target] = {"combination": chosen, "tests": {}}
            for seed in lc.seeds:
                done = out / "transfer" / target / f"seed{seed}" / "predictions.csv"
                if done.is_file():       # a finished transfer is not run again
                    preds.append(pd.read_csv(done, dtype={"id": str, "group": str}))
                    continue
                n_before = len(preds)
                model = Path(models[("+".join(group), chosen, seed)])
                ckpt = str(model / "checkpoints" / "best.ckpt")
                ctx = ArmContext(cfg.model_copy(update={"experiment": _target_exp(cfg, target)}), arm, data, seed,
                                 out / "transfer" / target / f"seed{seed}")
                if "feature_extraction" in lc.transfer:
                    sc, sets, _ = svm_transfer(ctx, target, ckpt)
                    for split in sc:
                        preds.append(prediction_rows(sc[split], sets[split], data, {target: data.tasks[target]},
                                                     arm="loto_feature_extraction", seed=seed, split=split))
                if "finetune" in lc.transfer:
                    ctx.arm = arm.model_copy(update={"lrs": lc.lrs, "source_arm": None, "pretrained": ckpt})
                    best = _lr_grid(ctx, ckpt).runs[""]
                    from medmtl.experiment import _score_run

                    for split in ("val", "test"):
                        preds.append(_score_run(best, data, cfg, [target], split, False, "loto_finetune", seed))
                done.parent.mkdir(parents=True, exist_ok=True)
                pd.concat(preds[n_before:], ignore_index=True).to_csv(done, index=False)
    pred = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    out.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out / "predictions.csv", index=False)
    from medmtl.experiment import metrics_of

    summary["metrics"] = metrics_of(pred, data) if len(pred) else {}
    scores.to_csv(out / "scores.csv", index=False)
    ranks.to_csv(out / "ranks.csv")
    _write_json(out / "summary.json", summary)
    return summary


def _target_exp(cfg, target):
    from medmtl.config.schema import ArmConfig, ExperimentSection

    return ExperimentSection(main_task=target, arms=[ArmConfig(name="loto", strategy="joint")])
