"""Checkpoints written atomically and read back with ``weights_only=True``."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def save_atomic(obj, path: str | Path) -> None:
    """Write to a temporary file, flush to disk, then rename: a kill leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: str | Path) -> dict:
    """Load a medmtl checkpoint; only tensors and plain containers are accepted (no pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    """Every random generator the loop draws from, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [list(v) if isinstance(v, tuple) else v for v in random.getstate()],
        # this process's own GPU only: under DDP each rank draws on its device, and rank r restores
        # rank r's state (see Trainer.state), never rank 0's states of every device
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        # one state: this device's; several (checkpoints before medmtl 0.1 saved every device's): ours
        torch.cuda.set_rng_state(cuda[0] if len(cuda) == 1 else cuda[torch.cuda.current_device()])
