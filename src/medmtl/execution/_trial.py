"""One trial's directory and the wrapper that runs it, shared by the sequential and Ray backends.

``result.json`` is the done-marker: it is written atomically and only after the trial function
returned, so its presence means the trial finished. ``error.txt`` holds the traceback of the last
failed attempt and ``params.json`` the config the trial ran with.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

RESULT, ERROR, PARAMS = "result.json", "error.txt", "params.json"

TrialFn = Callable[[dict, Path], dict]


def trial_dir(out_dir: Path, trial_id: str) -> Path:
    return out_dir / "trials" / trial_id


def read_result(directory: Path) -> dict | None:
    """The stored result of a finished trial, or None when it has not finished."""
    path = directory / RESULT
    return json.loads(path.read_text()) if path.exists() else None


def read_params(directory: Path) -> dict | None:
    path = directory / PARAMS
    return json.loads(path.read_text()) if path.exists() else None


def as_stored(params: dict) -> dict:
    """``params`` as ``params.json`` holds them, so stored and current configs compare equal."""
    return json.loads(json.dumps(params, sort_keys=True, default=repr))


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, flush to disk, then rename: a kill leaves no half-written marker."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def run_trial(fn: TrialFn, params: dict, directory: Path, threads: int) -> dict[str, Any]:
    """Run ``fn`` once in this process and leave the matching marker in ``directory``.

    An exception from ``fn`` is recorded, not raised, so one bad configuration cannot stop the
    rest of the grid; KeyboardInterrupt and SystemExit still stop it.

    Args:
        fn: The trial function, called as ``fn(params, directory)``.
        params: The trial's config; ``fn`` gets a copy.
        directory: The trial's directory, created if needed.
        threads: Torch intra-op threads while ``fn`` runs (the trial's CPU share).

    Returns:
        ``{"status": "done", "result": ...}`` or ``{"status": "failed", "error": traceback}``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ERROR).unlink(missing_ok=True)   # a stale traceback would describe an older attempt
    write_atomic(directory / PARAMS, json.dumps(as_stored(params), indent=2, sort_keys=True))
    try:
        with torch_threads(threads):
            result = fn(copy.deepcopy(params), directory)
        text = _result_json(result)
    except Exception:
        error = traceback.format_exc()
        write_atomic(directory / ERROR, error)
        return {"status": "failed", "error": error}
    write_atomic(directory / RESULT, text)
    # Returned as read back from JSON, so a fresh result equals the stored one a rerun returns.
    return {"status": "done", "result": json.loads(text)}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Limit torch to ``n`` intra-op threads, then restore the previous setting.

    Without this, each concurrent trial starts one thread per core: two trials on two cores run
    four busy threads that preempt each other. Using the same count in both backends also keeps
    results comparable, since the thread count changes the order of floating-point reductions.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _result_json(result: Any) -> str:
    if not isinstance(result, dict):
        raise TypeError(f"the trial function must return a dict of results; it returned {type(result).__name__}")
    try:
        return json.dumps(result, indent=2, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"the trial function's result is not JSON-serialisable ({err}); "
                        "convert tensors and arrays with .item() or .tolist()") from None
