"""`make bench`: speed goals measured as ratios within one run, printed as `name: value`.

cache_second_vs_first: a pass over every PCam image (read the folders, decode/resize, hash and
dedupe, then touch every image) with an empty cache, divided by the same pass on the warm cache.
Goal >= 10.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from medmtl.config import parse_config  # noqa: E402
from medmtl.data.pipeline import prepare  # noqa: E402


def pcam_pass(cache_dir: str, run_dir: str) -> float:
    cfg = parse_config({
        "name": "bench", "cache_dir": cache_dir, "run_dir": run_dir,
        "leakage": {"policy": "off"},
        "tasks": [{"name": "pcam", "kind": "binary", "classes": ["0", "1"], "target": "class",
                   "reader": {"name": "folder", "root": "${MEDMTL_DATA}/pcam"},
                   "image": {"size": 96, "mode": "RGB"}, "split": {"method": "official"}}],
    })
    start = time.perf_counter()
    data = prepare(cfg, progress=False, write_splits=False)
    cached = data.source_of("pcam").cached
    checksum = 0
    for i in range(len(cached)):          # every image read once, as an epoch would
        checksum += int(cached.image(i)[48, 48, 0])
    elapsed = time.perf_counter() - start
    print(f"# pcam pass: {len(cached)} images, {elapsed:.2f} s, decoded {cached.decoded}", file=sys.stderr)
    return elapsed


def main() -> None:
    os.environ.setdefault("MEDMTL_DATA", str(REPO.parent / "shared" / "datasets"))
    with tempfile.TemporaryDirectory() as tmp:
        first = pcam_pass(f"{tmp}/cache", f"{tmp}/run")
        second = pcam_pass(f"{tmp}/cache", f"{tmp}/run")
    print(f"cache_second_vs_first: {first / second:.1f}")


if __name__ == "__main__":
    main()
