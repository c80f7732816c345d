"""Tiny ``torch.distributed`` helpers that are no-ops without a process group.

Components that average over the batch (DINO centres, Sinkhorn sums, queues, k-means)
all-reduce *inside* themselves so that 2 processes × B/2 equals 1 process × B (DESIGN.md §3).
They call these helpers, which work unchanged in a single process without
``init_process_group`` (unlike DINO's official code, which needs a group even for one GPU).

The reductions are **not differentiable** (``dist.all_reduce`` has no autograd); use them on
statistics computed under ``torch.no_grad()``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_reduce_max",
    "all_reduce_mean",
    "all_reduce_sum",
    "is_distributed",
    "is_main_process",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0 (and always without a process group): log and save only here."""
    return rank() == 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all processes **in place** and return it.

    Args:
        tensor: any shape; must live on a device the backend supports (CPU for gloo,
            CUDA for nccl). Must be contiguous.

    Returns:
        The same tensor object, now holding the global sum (unchanged with one process or
        without a process group).
    """
    if is_distributed() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Average ``tensor`` over all processes **in place** and return it.

    This is the mean of the per-process values; to average over samples when processes
    hold different batch sizes, all-reduce a sum and a count with :func:`all_reduce_sum`
    instead.

    Args:
        tensor: floating-point tensor of any shape (see :func:`all_reduce_sum`).

    Returns:
        The same tensor object, now holding the mean over processes.
    """
    if not torch.is_floating_point(tensor):
        raise TypeError(f"all_reduce_mean needs a floating-point tensor, got {tensor.dtype}")
    n = world_size()
    if n > 1:
        all_reduce_sum(tensor)
        tensor.div_(n)
    return tensor


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Element-wise maximum of ``tensor`` over all processes **in place**; returns it.

    Args:
        tensor: any shape (see :func:`all_reduce_sum` for devices).

    Returns:
        The same tensor object, now holding the maximum over processes.
    """
    if is_distributed() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor
