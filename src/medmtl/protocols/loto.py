"""Leave-one-task-out (LOTO) model selection and transfer (Mormont et al., IEEE JBHI 2020).

Selecting pre-training hyper-parameters on the task one transfers to would leak it into the
choice; LOTO instead scores every combination on tasks the model never saw and picks, for a
target, the combination that ranks best on the *other* tasks. Trials are resumable: a trial
with a ``result.json`` is never trained again.

Written under ``run_dir/loto/``: ``scores.csv`` (validation AUC per task, combination, seed),
``ranks.csv``/``rank_table.csv`` (ranks, mean ranks), ``predictions.csv`` and ``summary.json``; the
LOTO arms (``loto_feature_extraction``, ``loto_finetune``, ``loto_joint``) are also added to
``results/`` for the report. With ``artifact``: ``run_dir/artifacts/pool_trunk.pt`` and its model card.
"""
from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

import medmtl
from medmtl.config.schema import ArmConfig, ExperimentSection
from medmtl.data.pipeline import prepare
from medmtl.data.readers import default_data_root
from medmtl.engine.predict import load_run
from medmtl.errors import ConfigError
from medmtl.evaluation import audit
from medmtl.evaluation.predictions import prediction_rows
from medmtl.evaluation.results import publish_arms, read_rows, write_json
from medmtl.evaluation.scoring import metrics_of, score_run, threshold_decisions
from medmtl.execution import Executor, Trial, prepared
from medmtl.metrics import auc, higher_is_better
from medmtl.models.trunks import save_trunk
from medmtl.protocols._base import PROTOCOLS, ProtocolRun
from medmtl.protocols.strategies import ArmContext, lr_grid, svm_transfer, train_arm

log = logging.getLogger("medmtl.protocols")


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


def target_groups(groups: list[list[str]], targets: list[str] | None) -> list[list[str]]:
    """The left-out groups holding a target (a group is left out whole); every group when ``None``."""
    if targets is None:
        return groups
    pool = [t for g in groups for t in g]
    unknown = sorted(set(targets) - set(pool))
    if unknown:
        raise ConfigError(f"loto.targets: {unknown} are not in loto.pool {pool}")
    return [g for g in groups if set(g) & set(targets)]


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


def rank_summary(ranks: pd.DataFrame) -> pd.DataFrame:
    """The rank table of the report: each task's rank of each combination, the mean rank over every
    task (``mean_rank``; the pool trunk's choice) and over all tasks but one (``mean_rank_without_<t>``,
    the choice for target ``t``), sorted by ``mean_rank``."""
    out = ranks.copy()
    out["mean_rank"] = ranks.mean(axis=1)
    if ranks.shape[1] > 1:
        for t in ranks.columns:
            out[f"mean_rank_without_{t}"] = ranks.drop(columns=[t]).mean(axis=1)
    return out.sort_values("mean_rank", kind="stable")


def choose(ranks: pd.DataFrame, target: str, exclude=()) -> str:
    """The combination with the best average rank over every task except ``target`` and ``exclude``
    (its related tasks and the tasks holding copies of its images: see :func:`forbidden_for`)."""
    others = ranked_on(ranks, target, exclude)
    if not others:
        raise ConfigError(f"LOTO: no left-out task is left to rank combinations for {target!r} once its related "
                          f"tasks and copy-holding tasks {sorted(set(exclude) - {target})} are excluded; add "
                          "unrelated tasks to loto.pool or loto.targets")
    return str(ranks[others].mean(axis=1).idxmin())


def ranked_on(ranks: pd.DataFrame, target: str, exclude=()) -> list[str]:
    return [t for t in ranks.columns if t != target and t not in set(exclude)]


def forbidden_for(target: str, group: list[str], data) -> set[str]:
    """What a choice for ``target`` must not read: its left-out group (tasks declared related) and
    every task with cross-dataset copies of its images, either way round (BreastMNIST holds copies
    of BUSI images: ranking BUSI's choice on BreastMNIST would rank it partly on BUSI itself)."""
    copies = (getattr(data, "leakage", None) or {}).get("cross_duplicates", {})
    holders = {o for o, n in copies.get(target, {}).items() if n} | {t for t, d in copies.items() if d.get(target)}
    return (set(group) | holders | {target}) - {None}


def loto_trial(cfg, data, group: list[str], combo: dict, seed: int, trial: Path) -> dict:
    """One LOTO trial: a multi-task model on the pool without ``group``, scored on each task of
    ``group`` by a linear SVM on its frozen trunk (validation AUC). A finished trial is read back."""
    result_file = trial / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    lc = cfg.loto
    arm = ArmConfig(name="loto", strategy="joint", svm_c=lc.svm_c, lrs=lc.lrs)
    ctx = ArmContext(cfg, arm, data, seed, trial / "model", task="+".join(group))
    model_dir, _ = train_arm(ctx, [t for t in lc.pool if t not in group], trial / "model", extra=combo)
    result = {"model": str(model_dir), "auc": {}}
    for task in group:
        scores, _, _ = svm_transfer(ctx, task, str(model_dir / "checkpoints" / "best.ckpt"), splits=("val",))
        d = scores["val"][task]
        result["auc"][task] = auc(d["y"], d["p"])
    result["decisions"] = ctx.decisions
    trial.mkdir(parents=True, exist_ok=True)
    write_json(result_file, result)
    return result


def run_loto_trial(params: dict, trial_dir: Path) -> dict:
    """A LOTO trial as a grid trial (a top-level function, so Ray can ship it to a worker)."""
    cfg, data = prepared(params["config"], "LOTO trial")
    return loto_trial(cfg, data, params["group"], params["combo"], params["seed"], Path(params["trial"]))


def _run_trials_on_grid(cfg, out: Path, groups, combos, executor: Executor) -> None:
    """With a parallel executor (``medmtl run --workers N`` / ``--ray-address``): every unfinished LOTO
    trial (left-out group x combination x seed) as one grid trial first; the protocol then reads
    their results."""
    if not executor.parallel:
        return
    base, out = cfg.model_dump(mode="json"), Path(out).resolve()
    trials = []
    for group in groups:
        for cid, combo in combos.items():
            for seed in cfg.loto.seeds:
                trial = out / "trials" / "+".join(group) / cid / f"seed{seed}"
                if (trial / "result.json").is_file():
                    continue
                name = f"{'+'.join(group)}/{cid}/seed{seed}"
                trials.append(Trial(hashlib.sha1(name.encode()).hexdigest()[:12], name, {"trial": name},
                                    {"config": base, "group": group, "combo": combo, "seed": seed,
                                     "trial": str(trial)}))
    executor.run(trials, run_loto_trial, out / "grid", "LOTO")


@PROTOCOLS.register("loto", section="loto")
def loto(cfg, run_dir: Path, executor: Executor, progress: bool) -> ProtocolRun:
    """The LOTO protocol of ``cfg.loto`` on freshly prepared data (see :func:`run_loto`)."""
    data = prepare(cfg, progress=progress)
    summary = run_loto(cfg, data, run_dir, executor)
    path = Path(run_dir) / "loto" / "predictions.csv"
    return ProtocolRun(read_rows(path) if path.stat().st_size > 1 else pd.DataFrame(), data, summary,
                       summary["audit"])


def run_loto(cfg, data, run_dir: Path, executor: Executor | None = None) -> dict:
    """Run the LOTO protocol of ``cfg.loto``; writes ``run_dir/loto/`` and returns the summary."""
    executor = executor or Executor()
    lc = cfg.loto
    unknown = sorted(set(lc.pool) - set(data.tasks))
    if unknown:
        raise ConfigError(f"loto.pool: {unknown} are not declared tasks")
    out = Path(run_dir) / "loto"
    groups = target_groups(left_out_groups(lc.pool, lc.related), lc.targets)
    combos = {combo_id(c): c for c in combinations(lc.grid)}
    arm = ArmConfig(name="loto", strategy="joint", svm_c=lc.svm_c, lrs=lc.lrs)
    _run_trials_on_grid(cfg, out, groups, combos, executor)
    rows, models, upstream, audits = [], {}, {}, []
    for group in groups:
        for cid, combo in combos.items():
            for seed in lc.seeds:
                trial = out / "trials" / "+".join(group) / cid / f"seed{seed}"
                result = loto_trial(cfg, data, group, combo, seed, trial)
                models[("+".join(group), cid, seed)] = result["model"]
                upstream[("+".join(group), cid, seed)] = result.get("decisions", [])
                audits.append({"decisions": result.get("decisions", [])})
                rows += [{"task": t, "combo": cid, "seed": seed, "auc": a} for t, a in result["auc"].items()]
    scores = pd.DataFrame(rows)
    ranks = rank_table(scores)
    summary = {"groups": groups, "combinations": combos, "ranks": ranks.to_dict(), "targets": {}}
    preds = []
    for group in groups:
        for target in group:
            forbidden = forbidden_for(target, group, data)
            chosen = choose(ranks, target, forbidden)
            summary["targets"][target] = {"combination": chosen, "tests": {},
                                          "ranked_on": ranked_on(ranks, target, forbidden)}
            audits.append({"decisions": [audit.decision(
                "loto_combination", arm="loto", seed="all", task=target,
                reads=audit.reads(ranked_on(ranks, target, forbidden), "val"), chose=chosen, grid=list(combos),
                forbidden=forbidden)]})
            for seed in lc.seeds:
                # the transferred models inherit the trial model's decisions: checked against this target
                audits.append({"decisions": upstream_decisions(upstream[("+".join(group), chosen, seed)], target,
                                                               seed, forbidden - {target},
                                                               models[("+".join(group), chosen, seed)])})
                tdir = out / "transfer" / target / f"seed{seed}"
                done, kept = tdir / "predictions.csv", tdir / "audit.json"
                if done.is_file():       # a finished transfer is not run again
                    preds.append(read_rows(done))
                    audits.append(json.loads(kept.read_text()) if kept.is_file() else {})
                    continue
                n_before = len(preds)
                model = Path(models[("+".join(group), chosen, seed)])
                ckpt = str(model / "checkpoints" / "best.ckpt")
                ctx = ArmContext(cfg.model_copy(update={"experiment": _target_exp(cfg, target)}), arm, data, seed,
                                 tdir)
                tested = []
                if "feature_extraction" in lc.transfer:
                    sc, sets, _ = svm_transfer(ctx, target, ckpt)
                    for split in sc:
                        preds.append(prediction_rows(sc[split], sets[split], data, {target: data.tasks[target]},
                                                     arm="loto_feature_extraction", seed=seed, split=split))
                    tested.append(audit.test_score("loto_feature_extraction", seed, target, final=True,
                                                   why="SVM on the chosen combination's trunk"))
                if "finetune" in lc.transfer:
                    ctx.arm = arm.model_copy(update={"lrs": lc.lrs, "source_arm": None, "pretrained": ckpt})
                    best = lr_grid(ctx, ckpt).runs[""]
                    for split in ("val", "test"):
                        preds.append(score_run(best, data, [target], split, False, "loto_finetune", seed))
                    tested.append(audit.test_score("loto_finetune", seed, target, final=True,
                                                   why="fine-tuned from the chosen combination, lr on validation"))
                done.parent.mkdir(parents=True, exist_ok=True)
                pd.concat(preds[n_before:], ignore_index=True).to_csv(done, index=False)
                audits.append({"decisions": ctx.decisions, "test_scores": tested})
                write_json(kept, audits[-1])
    if lc.joint or lc.artifact:
        targets = [t for g in groups for t in g] if lc.joint else []
        best = _best_overall(ranks)
        trials, pool_rows = _pool_models(cfg, data, out, combos if lc.joint else {best: combos[best]}, arm, targets)
        audits += [t["audit"] for t in trials]
        if lc.joint:
            joint, joint_audit = _joint_rows(pool_rows, data, targets, summary, trials)
            preds.append(joint)
            audits.append(joint_audit)
        if lc.artifact:
            summary["artifact"] = save_pool_artifact(cfg, data, ranks, combos, trials, run_dir)
            audits.append({"decisions": [audit.decision(
                "pool_trunk_combination", arm="loto", seed="all", task="pool trunk",
                reads=audit.reads(list(ranks.columns), "val"), chose=best, grid=list(combos))]})
    pred = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    out.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out / "predictions.csv", index=False)
    summary["metrics"] = metrics_of(pred, data) if len(pred) else {}
    summary["audit"] = audit.merge(*audits, {"decisions": threshold_decisions(summary["metrics"])})
    scores.to_csv(out / "scores.csv", index=False)
    ranks.to_csv(out / "ranks.csv")
    rank_summary(ranks).to_csv(out / "rank_table.csv")
    write_json(out / "summary.json", summary)
    if len(pred):
        # the application whose main task is the target, so that per-application views line up
        apps = {a.main_task: name for name, a in (cfg.experiment.applications if cfg.experiment else {}).items()}
        publish_arms(run_dir, pred, summary["metrics"], "loto_", apps)
    return summary


POOL = "_pool"   # trials on the whole pool: the joint arm and the pool trunk


def upstream_decisions(decisions: list[dict], target: str, seed, forbidden: set[str], model: str) -> list[dict]:
    """The decisions that made the trunk a target's transferred models start from (its best epoch,
    read on the trial's training tasks), recorded for that target with what it must not read: a
    trunk chosen on a related or copy-holding task's labels would carry them into the target."""
    return [audit.decision(d["what"], arm="loto (upstream trunk)", seed=seed, task=target, reads=d["reads"],
                           chose=d["chose"], forbidden=forbidden, via=model, upstream_for=d["for"])
            for d in decisions if d["what"] not in SCORING_DECISIONS]


# a trial's decisions that score it (the SVM of each left-out task) and do not shape its trunk
SCORING_DECISIONS = ("svm_c",)


def _best_overall(ranks: pd.DataFrame) -> str:
    return str(ranks.mean(axis=1).idxmin())


def _pool_models(cfg, data, out: Path, combos: dict, arm, targets: list[str]) -> tuple[list[dict], pd.DataFrame]:
    """Train (or reuse) one model on the whole pool per combination and seed, and score ``targets``
    on their validation splits; a finished trial is only read back. Returns the trials ({combo,
    seed, model, audit}) and the validation rows (with ``combo``). Test is scored only for the
    combination chosen on validation (:func:`_joint_rows`)."""
    lc, trials, frames = cfg.loto, [], []
    for cid, combo in combos.items():
        for seed in lc.seeds:
            trial = out / "trials" / POOL / cid / f"seed{seed}"
            model_dir, done, scored = trial / "model", trial / "result.json", trial / "predictions.csv"
            if not done.is_file():
                ctx = ArmContext(cfg, arm, data, seed, model_dir, task="pool")
                train_arm(ctx, list(lc.pool), model_dir, extra=combo)
                write_json(done, {"model": str(model_dir), "combo": cid, "seed": seed, "decisions": ctx.decisions})
            rows = read_rows(scored) if scored.is_file() else pd.DataFrame()
            rows = rows[rows["split"] == "val"] if len(rows) else rows
            missing = [t for t in targets if not len(rows) or t not in set(rows["task"])]
            if missing:    # joint turned on, or more targets, after the trial was trained
                new = [score_run(model_dir, data, [t], "val", False, "loto_joint", seed) for t in missing]
                rows = pd.concat([rows, *(r.assign(combo=cid) for r in new)], ignore_index=True)
                rows.to_csv(scored, index=False)
            decisions = json.loads(done.read_text()).get("decisions", [])
            trials.append({"combo": cid, "seed": seed, "model": str(model_dir), "audit": {"decisions": decisions}})
            frames.append(rows)
    return trials, pd.concat(frames, ignore_index=True)


def _joint_rows(pool_rows: pd.DataFrame, data, targets: list[str], summary: dict,
                trials: list[dict]) -> tuple[pd.DataFrame, dict]:
    """Joint training (the paper's 'joint'): for each target, the whole-pool combination with the best
    validation metric of that target (mean over seeds, in the metric's direction); its validation rows
    and the test rows of its models, the only pool models scored on test. Returns the rows and audit."""
    keep, decisions, tested = [], [], []
    for target in targets:
        metric = data.tasks[target].metric
        sign = 1.0 if higher_is_better(metric) else -1.0
        val = {}
        for cid, rows in pool_rows[(pool_rows.task == target) & (pool_rows.split == "val")].groupby("combo"):
            per_seed = metrics_of(rows.drop(columns=["combo"]), data)["loto_joint"]
            val[cid] = float(np.nanmean([m[target]["val"][metric] for m in per_seed.values()]))
        chosen = max(val, key=lambda c: (np.nan_to_num(sign * val[c], nan=-np.inf), c))
        summary["targets"].setdefault(target, {})["joint_combination"] = chosen
        decisions.append(audit.decision("joint_combination", arm="loto_joint", seed="all", task=target,
                                        reads=audit.reads([target], "val"), chose=chosen, grid=sorted(val)))
        keep.append(pool_rows[(pool_rows.task == target) & (pool_rows.combo == chosen)])
        for t in trials:
            if t["combo"] != chosen:
                continue
            cached = Path(t["model"]).parent / f"test_{target}.csv"
            rows = read_rows(cached) if cached.is_file() else \
                score_run(Path(t["model"]), data, [target], "test", False, "loto_joint", t["seed"])
            rows.to_csv(cached, index=False)
            keep.append(rows.assign(combo=chosen))
            tested.append(audit.test_score("loto_joint", t["seed"], target, final=True,
                                           why="whole-pool model of the combination chosen on validation"))
    rows = pd.concat(keep, ignore_index=True).drop(columns=["combo"])
    return rows, {"decisions": decisions, "test_scores": tested}


def save_pool_artifact(cfg, data, ranks: pd.DataFrame, combos: dict, trials: list[dict], run_dir: Path) -> dict:
    """Save the whole-pool trunk of the combination with the best mean rank over every left-out task
    (first seed) as ``artifacts/pool_trunk.pt`` (:func:`save_trunk` format, weights only) with
    ``model_card.json`` and ``model_card.md``; returns the card."""
    lc = cfg.loto
    cid, seed = _best_overall(ranks), lc.seeds[0]
    model_dir = Path(next(t["model"] for t in trials if t["combo"] == cid and t["seed"] == seed))
    _, model, _ = load_run(model_dir)
    art = Path(run_dir) / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    path = art / "pool_trunk.pt"
    save_trunk(model.trunk, path)
    # the validation metrics of the kept epoch, on the validation images training used (data.limit_eval)
    val = json.loads((model_dir / "metrics.json").read_text())["val"]
    tasks = []
    for name in lc.pool:
        t, spec = cfg.task(name), data.tasks[name]
        reader = t.reader.model_dump(mode="json")
        tasks.append({"name": name, "kind": t.kind, "classes": list(spec.classes or []), "domain": t.domain,
                      "reader": reader, "split": t.split.method,
                      "images": {s: int(len(data.rows(name, s))) for s in ("train", "val", "test")},
                      "removed_by_leakage_guard": {k: int(v) for k, v in
                                                   data.leakage.get("excluded", {}).get(name, {}).items()},
                      "val_metrics": {k: float(v) for k, v in val.get(name, {}).items()}})
    ranked = ranks.mean(axis=1)
    card = {
        "name": f"{cfg.name} pool trunk", "file": path.name, "trunk": cfg.model.trunk.name,
        "trunk_kwargs": cfg.model.trunk.kwargs, "in_chans": cfg.model.trunk.in_chans,
        "initialised_from": cfg.model.trunk.pretrained, "input_size": cfg.data.size,
        "combination": combos[cid], "combination_id": cid, "seed": seed,
        "mean_rank": float(ranked[cid]), "ranked_on": list(ranks.columns), "n_combinations": len(ranked),
        "tasks": tasks, "val_metrics_on": f"the validation images of training (data.limit_eval={cfg.data.limit_eval})",
        "data_root": str(default_data_root().resolve()), "model_run": str(model_dir),
        "settings": {"data": cfg.data.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json"),
                     "leakage": cfg.leakage.model_dump(mode="json")},
        "medmtl_version": medmtl.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "usage": f"model: {{trunk: {{name: {cfg.model.trunk.name}, pretrained: {path}}}}}",
    }
    write_json(art / "model_card.json", card)
    (art / "model_card.md").write_text(_card_markdown(card), encoding="utf-8")
    log.info("pool trunk (combination %s, seed %d) saved to %s", cid, seed, path)
    return card


def _card_markdown(card: dict) -> str:
    lines = [f"# {card['name']}", "",
             f"A `{card['trunk']}` trunk (input {card['input_size']} px, {card['in_chans']} channels) trained "
             f"by multi-task learning on {len(card['tasks'])} tasks with linear heads (Mormont et al. 2020), "
             f"started from `{card['initialised_from']}`. medmtl {card['medmtl_version']}, {card['date']}.", "",
             f"Use: `{card['usage']}`", "",
             f"Hyper-parameters: combination `{card['combination_id']}` {card['combination']} (seed {card['seed']}), "
             f"mean rank {card['mean_rank']:.2f} of {card['n_combinations']} on the left-out tasks "
             f"{card['ranked_on']}.", "", f"Data root: `{card['data_root']}`.", "",
             "| task | kind | domain | train | val | test | removed (leakage) | validation |",
             "|---|---|---|---|---|---|---|---|"]
    for t in card["tasks"]:
        removed = ", ".join(f"{n} from {k}" for k, n in t["removed_by_leakage_guard"].items()) or "0"
        score = ", ".join(f"{k} {v:.3f}" for k, v in t["val_metrics"].items() if k in ("auc", "accuracy"))
        lines.append(f"| {t['name']} | {t['kind']} | {t['domain']} | {t['images']['train']} | {t['images']['val']} "
                     f"| {t['images']['test']} | {removed} | {score} |")
    return "\n".join(lines) + "\n"


def _target_exp(cfg, target):
    return ExperimentSection(main_task=target, arms=[ArmConfig(name="loto", strategy="joint")])
