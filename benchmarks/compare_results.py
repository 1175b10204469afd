"""Compare the ``results/metrics.json`` of the same studies run at two commits, number for number.

    python benchmarks/compare_results.py BEFORE_DIR AFTER_DIR --before-commit C1 --after-commit C2 \\
        --out experiments/results/layering-check.json

Each directory holds one ``<study>.json`` per study (a copy of that run's ``results/metrics.json``).
A refactoring that should not change behaviour must leave every file identical (NaN equals NaN);
the differences, if any, are listed by their key path.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
from pathlib import Path


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only {'after' if k not in a else 'before'}")
            else:
                out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} -> {b!r}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--before-commit", required=True)
    ap.add_argument("--after-commit", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    studies = {}
    for f in sorted(args.before.glob("*.json")):
        g = args.after / f.name
        if not g.is_file():
            studies[f.stem] = {"status": "missing after"}
            continue
        diff = differences(json.loads(f.read_text()), json.loads(g.read_text()))
        studies[f.stem] = {"status": "identical" if not diff else "different", "differences": diff[:50],
                           "values_compared": f.read_text().count(":")}
    doc = {"what": "each study's quick run (medmtl run experiments/<study>.yaml --quick), results/metrics.json",
           "before_commit": args.before_commit, "after_commit": args.after_commit,
           "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.node()}",
           "studies": studies}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for name, s in studies.items():
        print(f"{name}: {s['status']}")


if __name__ == "__main__":
    main()
