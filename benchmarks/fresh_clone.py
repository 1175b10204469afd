"""Time the README's two commands on a fresh clone, as a newcomer runs them, and store the times.

    python benchmarks/fresh_clone.py demo     # git clone + `make demo` (install included, cold data cache)
    python benchmarks/fresh_clone.py ci       # git clone + `CI=true bash .ci/run` (install + the whole test suite)

Each target clones the committed HEAD beside the project (``../fresh-clone``: no ``.venv``, no
``runs/``, so the install and the decode cache start from nothing), runs the command there with its
output teed to ``fresh-clone-<target>.log`` beside the clone, and merges into
``experiments/results/fresh-clone.json`` the commit, date, machine, wall time, exit status and
what a newcomer must see at the end (``demo``: the comparison table and the report path; ``ci``:
pytest's summary line). The README's block ``<!-- fresh:fresh-clone -->`` is rendered from that
file by ``python benchmarks/studies.py readme``. One heavy job at a time: the times mean something
only on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from studies import REPO, RESULTS, git_commit, machine  # noqa: E402

TARGETS = {
    "demo": ["make", "demo"],
    "ci": ["bash", ".ci/run"],
}
OUT = RESULTS / "fresh-clone.json"


def _seen(target: str, output: str) -> dict:
    """What the end of the output shows a newcomer (checked, not assumed)."""
    if target == "demo":
        # the closing lines of `medmtl run` (medmtl.reports.summary.run_summary)
        report = re.findall(r"^report: (\S*report\.html)$", output, re.M)
        return {"table_printed": "Test split (" in output, "report_path": report[-1] if report else None}
    summary = re.findall(r"^=*\s*(\d+ passed.*?)\s*=*$", output, re.M)
    return {"pytest_summary": summary[-1] if summary else None}


def run(target: str, dest: Path) -> dict:
    commit = git_commit()
    if commit.endswith("-dirty"):
        raise SystemExit(f"the working tree has uncommitted changes to tracked files; a clone of HEAD "
                         f"({commit[:-6]}) would not time them: commit first")
    if dest.exists():
        shutil.rmtree(dest)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.setdefault("MEDMTL_DATA", str((REPO.parent / "shared" / "datasets").resolve()))
    env["CI"] = "true"
    log = dest.parent / f"fresh-clone-{target}.log"
    start = time.perf_counter()
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    with log.open("w") as fh:
        proc = subprocess.Popen(TARGETS[target], cwd=dest, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        chunks = []
        for line in proc.stdout:
            fh.write(line)
            fh.flush()
            chunks.append(line)
        rc = proc.wait()
    seconds = time.perf_counter() - start
    output = "".join(chunks)
    return {"commit": commit, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
            "command": f"git clone + {' '.join(TARGETS[target])}", "seconds": round(seconds, 1),
            "returncode": rc, **_seen(target, output), "log": str(log)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    ap.add_argument("--dest", type=Path, default=REPO.parent / "fresh-clone")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"targets": {}}
    failed = []
    for target in args.targets:
        record = run(target, args.dest)
        print(f"{target}: {record['seconds']:.0f} s, exit {record['returncode']} ({record['log']})")
        if record["returncode"] != 0:
            failed.append(target)   # a failed run is reported, never stored as a time
            continue
        doc["targets"][target] = record
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (see the logs); nothing stored for them")


if __name__ == "__main__":
    main()
