"""Execution: expand a base config over axes and run one trial per configuration.

A grid is the product of its axes (hyper-parameters x seeds x left-out tasks x strategies).
``expand_grid`` turns it into :class:`Trial` objects with stable ids; ``run_grid`` runs the pending
ones sequentially in-process, or on Ray Tune with ``workers > 1`` or a ``ray_address``. Every trial
owns ``out_dir/trials/<trial_id>/``; its ``result.json`` is the done-marker, so a rerun of the same
grid never runs a finished trial again and retries only failed or missing ones. An
:class:`Executor` is what a protocol is handed to run its trainings.

Example:
    >>> trials = expand_grid({"seed": 0, "train": {"lr": 0.1}}, {"train.lr": [0.1, 0.01], "seed": [0, 1]})
    >>> [t.name for t in trials]
    ['lr=0.1,seed=0', 'lr=0.1,seed=1', 'lr=0.01,seed=0', 'lr=0.01,seed=1']
"""
from medmtl.execution._executor import SEQUENTIAL, Executor, prepared
from medmtl.execution._expand import Trial, expand_grid
from medmtl.execution._run import run_grid

__all__ = ["SEQUENTIAL", "Executor", "Trial", "expand_grid", "prepared", "run_grid"]
