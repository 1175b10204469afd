"""Multi-task learning: per-task losses (and, next to them, the loss weightings)."""
from medmtl.mtl.losses import LOSSES, compute_losses, task_loss

__all__ = ["LOSSES", "compute_losses", "task_loss"]
