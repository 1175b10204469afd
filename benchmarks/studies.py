"""Run the studies, store their results in the repository, and write the README's tables from them.

    python benchmarks/studies.py run s0-mtl-vs-tl [s1-aux-tasks ...] --profile quick
    python benchmarks/studies.py store RUN_DIR --config s0-mtl-vs-tl --profile quick --seconds 402
    python benchmarks/studies.py readme            # rewrite the README's result blocks from the files
    python benchmarks/studies.py readme --check    # exit 1 where the README and the files disagree

``run`` times ``medmtl run experiments/<config>.yaml --profile <profile>`` (no flag for ``full``) and stores
``experiments/results/<config>-<profile>.json``: the commit, date, machine, command and wall time,
the run's ``results/metrics.json`` under ``metrics`` and its report's ``results.json`` under
``report``. The README holds one block per file between ``<!-- results:<name> -->`` and
``<!-- /results -->``; every number in it is rendered here from the file, never typed in
(``tests/test_readme_results.py`` fails when they disagree).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
README = REPO / "README.md"
BLOCK = re.compile(r"<!-- (?P<kind>results|tta|ttq|bench|fresh|gpu):(?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- /(?P=kind) -->", re.S)
# the metrics a README row shows per task kind (the report has them all)
SHOWN = {"binary": ("auc", "balanced_accuracy_youden"), "multiclass": ("auc",), "ordinal": ("auc",),
         "segmentation": ("dice", "iou"), "detection": ("box_iou", "hit_rate")}
LABELS = {"auc": "AUC", "balanced_accuracy_youden": "balanced accuracy at the validation Youden threshold",
          "dice": "Dice", "iou": "IoU", "box_iou": "box IoU", "hit_rate": "hit rate (box IoU >= 0.5)"}


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    # stored results and the README are not code: an uncommitted one does not make the measured commit dirty
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!experiments/results", ":!README.md"], capture_output=True, text=True,
                           cwd=REPO).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"


def machine() -> str:
    """Architecture, CPU count, and the CPU model and widest vector unit when Linux tells them: on two
    machines of this workplace's one kind a ResNet-18 (28 px) training step took 2.0 s and 4.7 s."""
    cpu = _cpu()
    return f"{platform.machine()}, {os.cpu_count()} CPUs{f' ({cpu})' if cpu else ''}, {platform.system()}"


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), "")
    return ", ".join(x for x in (model, isa) if x)


def store(run_dir: Path, config: str, profile: str, seconds: float, command: str, commit: str | None = None) -> Path:
    """``experiments/results/<config>-<profile>.json`` from a finished run dir (its metrics and report)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "results" / "metrics.json").read_text())
    report = json.loads((run_dir / "report" / "results.json").read_text())
    report.pop("method", None)                      # the report's module docstring: text, not a result
    doc = {"config": f"experiments/{config}.yaml", "profile": profile, "command": command,
           "commit": commit or git_commit(), "date": datetime.date.today().isoformat(), "machine": machine(),
           "wall_seconds": round(float(seconds), 1), "metrics": metrics, "report": report}
    path = RESULTS / f"{Path(config).name}-{profile}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n")
    return path


def run(configs: list[str], profile: str) -> None:
    """Run each config with ``profile`` (``full``: the config as written) and store its results."""
    for config in configs:
        cfg_path = REPO / "experiments" / f"{config}.yaml"
        if not cfg_path.is_file():
            raise SystemExit(f"{cfg_path}: no such study config")
        flag = [] if profile == "full" else ["--profile", profile]
        command = " ".join(["medmtl", "run", f"experiments/{config}.yaml", *flag])
        commit = git_commit()
        start = time.perf_counter()
        argv = [sys.executable, "-m", "medmtl.cli", "run", str(cfg_path), "--no-progress", *flag]
        subprocess.run(argv, check=True, cwd=REPO)
        seconds = time.perf_counter() - start
        print(f"stored: {store(run_dir_of(cfg_path, profile), config, profile, seconds, command, commit)}")


def run_dir_of(cfg_path: Path, profile: str) -> Path:
    """Where ``medmtl run`` writes ``cfg_path`` under ``profile`` (the rule of ``apply_profile``)."""
    sys.path.insert(0, str(REPO / "src"))
    from medmtl.config import load_config
    from medmtl.protocols import apply_profile

    cfg = load_config(cfg_path)
    cfg = cfg if profile == "full" else apply_profile(cfg, profile)
    return REPO / cfg.run_dir


# ------------------------------------------------------------------------------------------ rendering
def _num(v, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def render(doc: dict) -> str:
    """The README block of one stored results file."""
    report = doc["report"]
    seeds = report.get("seeds") or []
    level = ("every comparison below is model-level (it compares the trained models of one seed, not the "
             "methods)" if len(seeds) < 3 else f"{len(seeds)} seeds: comparisons are method-level")
    lines = [f"Stored in `experiments/results/{doc['config'].split('/')[-1][:-5]}-{doc['profile']}.json`: "
             f"`{doc['command']}` at commit {doc['commit']} on {doc['date']} ({doc['machine']}), "
             f"{_duration(doc['wall_seconds'])}; seeds {seeds}: {level}.", "",
             "| arm | task | metric | test value [95% CI] | mean ± std over seeds | validation value |",
             "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        for name in SHOWN.get(row["kind"], ("auc",)):
            m = row["metrics"].get(name)
            if m is None:
                continue
            ci = f" [{_num(m.get('ci_low'))}, {_num(m.get('ci_high'))}]" if m.get("ci_low") is not None else ""
            spread = f"{_num(m.get('mean'))} ± {_num(m.get('std'))}" if row["n_seeds"] > 1 else "-"
            # a metric without a CI (the Youden ones need the validation threshold) has no 'ref': its seed value
            value = m.get("ref") if m.get("ref") is not None else (m.get("values") or {}).get(str(row["reference_seed"]))
            lines.append(f"| {row['arm']} | {row['task']} | {LABELS.get(name, name)} | {_num(value)}{ci} | "
                         f"{spread} | {_num(_validation(doc, row, name))} |")
    sections = report.get("sections", {})
    comparisons = (sections.get("comparisons") or {}).get("table") or []
    if comparisons:
        lines += ["", "Comparisons (test split, Holm-corrected; the report has the CIs and the seeds):", ""]
        for c in comparisons:
            lines.append(f"- {c['comparison']} on {c['task']} ({c['cases']}, {c['test']}): AUC {_num(c['AUC a'])} vs "
                         f"{_num(c['AUC b'])}, p (Holm) {_p(c.get('p (Holm)'))}, detectable difference "
                         f"{_num(c.get('detectable difference'))}: {c['verdict']}.")
    reference = (sections.get("reference") or {}).get("table") or []
    if reference:
        lines += ["", "Published values beside ours (the report says how the data differ):", ""]
        lines += [f"- {r['quantity']}: ours {_ref(r.get('ours (mean)'))}, published {_ref(r.get('published'))}"
                  for r in reference]
    tta = (sections.get("tta") or {}).get("data")
    if tta:
        lines += ["", f"TTA lowered the validation AUC of {tta['n_hurt']} of {len(tta['rows'])} models by more than "
                      f"{tta['hurts_threshold']} and moved the mean validation score of {tta.get('n_shifted', 0)} "
                      f"by more than {tta.get('shift_threshold')}."]
    audit = sections.get("audit")
    if audit:
        lines += ["", f"Selection audit: {audit['text'][0]}" + (f" {audit['text'][1]}" if len(audit["text"]) > 1 else "")]
    return "\n".join(lines) + "\n"


def _validation(doc: dict, row: dict, name: str):
    """The reference seed's validation value of a row, where the run's metrics.json has one per arm,
    seed and task (holdout protocols; CV and LOTO runs nest theirs deeper and show '-'): what an arm
    or a recipe is chosen by, beside the test value it is judged by."""
    cell = (doc.get("metrics") or {}).get(row["arm"], {})
    for key in (str(row["reference_seed"]), row["task"], "val", name):
        cell = cell.get(key) if isinstance(cell, dict) else None
    return cell if isinstance(cell, (int, float)) else None


def _ref(v) -> str:
    """A published value's precision: three digits for a fraction, two for a percentage."""
    return _num(v, 3 if v is not None and abs(v) <= 1.5 else 2)


def _p(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def stored(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def render_tta(doc: dict) -> str:
    """The README block of a ``benchmarks/tta_threshold.py`` file: each model with and without TTA."""
    lines = [f"Commit {doc['commit']}, {doc['date']} ({doc['machine']}). Test accuracy at 0.5 and at the "
             "validation Youden threshold (chosen on the same model's validation scores, with TTA when the row "
             "has it); 'mean score': the mean positive-class score, against the positive share of the split.", "",
             "| model | split | TTA | AUC | accuracy at 0.5 (majority) | accuracy at Youden | mean score (positive share) |",
             "|---|---|---|---|---|---|---|"]
    for name, model in doc["models"].items():
        for cell, m in model["cells"].items():
            split, view = cell.split("/")
            lines.append(f"| {name} (best epoch {model['best_epoch']}) | {split} | {'yes' if view == 'tta' else 'no'} | "
                         f"{_num(m['auc'])} | {_num(m['accuracy'])} ({_num(m['majority_accuracy'])}) | "
                         f"{_num(m.get('accuracy_youden'))} | {_num(m['mean_score'])} ({_num(m['prevalence'])}) |")
    return "\n".join(lines) + "\n"


def render_ttq(doc: dict) -> str:
    """The README block of a ``benchmarks/time_to_quality.py --out`` file (the published value from the
    reproduction config's reference, where it was typed in once)."""
    import yaml

    ref = yaml.safe_load((REPO / "experiments" / "reproduce" / "medmnist-v2-resnet18.yaml").read_text())
    published = next(v["published"] for v in ref["experiment"]["reference"]["values"]
                     if v["task"] == "breastmnist" and v.get("metric", "auc") == "auc")
    return (f"Commit {doc['commit']}, {doc['date']} ({doc['machine']}), {doc['epochs']} epochs, seed {doc['seed']}: "
            f"medmtl {_duration(doc['medmtl_seconds'])}, test AUC {_num(doc['medmtl_test_auc'])}; the bare loop "
            f"{_duration(doc['bare_seconds'])}, test AUC {_num(doc['bare_test_auc'])}; time_to_quality "
            f"(medmtl / bare) {doc['ratio']:.2f}. Published (MedMNIST v2, ResNet-18 (28), BreastMNIST): test AUC "
            f"{published:.3f}.\n")


def render_bench(doc: dict) -> str:
    """The README table of ``make bench``'s results file: one row per measured value, with the commit,
    date and machine of the run that measured it."""
    lines = ["| benchmark | value | goal | measured |", "|---|---|---|---|"]
    for part, record in doc["parts"].items():
        for name, v in record["values"].items():
            extra = {k: x for k, x in v.items() if k not in ("value", "goal", "rounds")}
            detail = ", ".join(f"{k} {x:g}" if isinstance(x, (int, float)) and not isinstance(x, bool)
                               else f"{k} {x}" for k, x in extra.items())
            lines.append(f"| `{name}`{f' ({detail})' if detail else ''} | {v['value']:g} | {v.get('goal', '')} | "
                         f"`{part}` part, commit {record['commit']}, {record['date']} ({record['machine']}) |")
    return "\n".join(lines) + "\n"


def render_fresh(doc: dict) -> str:
    """The README lines of ``benchmarks/fresh_clone.py``'s file: the README's commands timed on a fresh clone."""
    what = {"demo": "`make demo` (install included, cold decode cache)", "ci": "`.ci/run` (install and every test)"}
    lines = []
    for target, r in doc["targets"].items():
        seen = (f"; it ended with the comparison table and `report: {r['report_path']}`" if target == "demo"
                and r.get("table_printed") and r.get("report_path") else
                f"; pytest: {r['pytest_summary']}" if r.get("pytest_summary") else "")
        lines.append(f"- {what.get(target, target)} on a fresh clone: {_duration(r['seconds'])} at commit "
                     f"{r['commit']}, {r['date']} ({r['machine']}){seen}.")
    return "\n".join(lines) + "\n"


def render_gpu(doc: dict) -> str:
    """The README table of ``gpu_check.py estimate``'s file (rendered there, beside the counting)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check import render_estimate  # gpu_check imports this module: import it only when used

    return render_estimate(doc)


RENDERERS = {"results": render, "tta": render_tta, "ttq": render_ttq, "bench": render_bench, "fresh": render_fresh,
             "gpu": render_gpu}


def readme_blocks(text: str) -> dict[str, str]:
    return {f"{m['kind']}:{m['name']}": m["body"] for m in BLOCK.finditer(text)}


def rewrite_readme(text: str) -> str:
    return BLOCK.sub(lambda m: f"<!-- {m['kind']}:{m['name']} -->\n{RENDERERS[m['kind']](stored(m['name']))}"
                               f"<!-- /{m['kind']} -->", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("configs", nargs="+")
    r.add_argument("--profile", default="quick",
                   help="a profile of the configs (quick, standard, ...), or full: the config as written")
    s = sub.add_parser("store")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--config", required=True)
    s.add_argument("--profile", default="quick")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--command", default=None)
    d = sub.add_parser("readme")
    d.add_argument("--check", action="store_true")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.configs, args.profile)
    elif args.cmd == "store":
        flag = "" if args.profile == "full" else f" --profile {args.profile}"
        command = args.command or f"medmtl run experiments/{args.config}.yaml{flag}"
        print(store(args.run_dir, args.config, args.profile, args.seconds, command))
    else:
        text = README.read_text()
        new = rewrite_readme(text)
        if args.check:
            if new != text:
                raise SystemExit("README.md and experiments/results/ disagree: run `python benchmarks/studies.py readme`")
            print("README.md agrees with experiments/results/")
        else:
            README.write_text(new)
            print(f"README.md: {len(readme_blocks(new))} result blocks written")


if __name__ == "__main__":
    main()
