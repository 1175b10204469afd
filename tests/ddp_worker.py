"""Short trainings under DDP for tests/test_ddp.py: ``python tests/ddp_worker.py JOBS.json``.

Each job is ``{"config": raw config, "run_dir": ...}`` with ``train.devices`` 2: the first job's
Fabric starts the second process (it re-runs this script), and later jobs reuse the process
group. Every rank writes ``rank<k>.pt`` into each job's run dir: the dataset indices it trained on,
its steps and its final weights, so the test compares the ranks with each other and with a
one-process run. The script stops at a job that fails, its traceback in the job's ``error.txt``.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch


def run_job(job: dict) -> None:
    from medmtl.config import parse_config
    from medmtl.data.pipeline import prepare
    from medmtl.engine.loop import Trainer

    cfg = parse_config(job["config"], "ddp job")
    data = prepare(cfg, progress=False, write_splits=False)
    trainer = Trainer(cfg, data, Path(job["run_dir"]), progress=False)
    seen: list[int] = []
    step = trainer.train_step

    def recorded(batch):
        seen.extend(int(i) for i in batch["index"])
        return step(batch)

    trainer.train_step = recorded
    trainer.fit()
    rank = trainer.fabric.global_rank
    torch.save({"seen": seen, "steps": trainer.step, "epochs": trainer.epoch, "world": trainer.fabric.world_size,
                "model": {k: v.detach().cpu().clone() for k, v in trainer.net.state_dict().items()}},
               Path(job["run_dir"]) / f"rank{rank}.pt")


def main(jobs_file: str) -> None:
    for job in json.loads(Path(jobs_file).read_text()):
        run_dir = Path(job["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            run_job(job)
        except Exception:
            (run_dir / "error.txt").write_text(traceback.format_exc())
            raise


if __name__ == "__main__":
    main(sys.argv[1])
