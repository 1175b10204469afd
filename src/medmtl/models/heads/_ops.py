"""Bilinear resizing and adaptive average pooling that stay deterministic on a GPU.

torch's CUDA backward of ``F.interpolate(mode="bilinear")`` and of adaptive average pooling add
into their gradients with atomics, so under ``torch.use_deterministic_algorithms(True)`` they
raise (torch has no deterministic kernel for them). Both are linear maps along each image axis, so
when deterministic algorithms are on and the tensor is on a GPU they are computed here as two
matrix products, whose backward is deterministic; elsewhere torch's own kernels run. The two give
the same values up to float rounding (tests/test_heads.py compares them).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def _deterministic_gpu(x: torch.Tensor) -> bool:
    return x.device.type != "cpu" and torch.are_deterministic_algorithms_enabled()


@functools.lru_cache(maxsize=64)
def _bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of bilinear resizing with ``align_corners=False``, as torch computes
    them: source coordinate (i + 0.5) * n_in / n_out - 0.5, clamped at 0, and its two neighbours."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m


@functools.lru_cache(maxsize=64)
def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of adaptive average pooling: bin i spans floor(i n/o) to ceil((i+1) n/o)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _separable(x: torch.Tensor, mh: torch.Tensor, mw: torch.Tensor) -> torch.Tensor:
    mh, mw = mh.to(x.device, x.dtype), mw.to(x.device, x.dtype)
    return torch.matmul(torch.matmul(mh, x), mw.transpose(0, 1))


def resize_bilinear(x: torch.Tensor, size, *, matmul: bool | None = None) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)``; ``matmul`` (default: on a
    GPU with deterministic algorithms on) computes it as two matrix products."""
    size = tuple(int(s) for s in size)
    if not (_deterministic_gpu(x) if matmul is None else matmul):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    h, w = x.shape[-2:]
    return _separable(x, _bilinear_matrix(h, size[0]), _bilinear_matrix(w, size[1]))


def adaptive_avg_pool(x: torch.Tensor, size: int, *, matmul: bool | None = None) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)``; ``matmul`` as in :func:`resize_bilinear`."""
    if not (_deterministic_gpu(x) if matmul is None else matmul):
        return F.adaptive_avg_pool2d(x, size)
    h, w = x.shape[-2:]
    return _separable(x, _pool_matrix(h, size), _pool_matrix(w, size))


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d`` (square output) through :func:`adaptive_avg_pool`; no parameters, so
    a checkpoint saved with ``nn.AdaptiveAvgPool2d`` in its place loads unchanged."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}"
