"""Tiny ``torch.distributed`` helpers that are no-ops without a process group.

Components that average over the batch (DINO centres, Sinkhorn sums, queues, k-means)
all-reduce *inside* themselves so that 2 processes × B/2 equals 1 process × B
(``tests/train/test_distributed_methods.py`` checks it for every method). They call these helpers,
which work unchanged in a single process without ``init_process_group`` (unlike DINO's
official code, which needs a group even for one GPU).

The reductions are **not differentiable** (``dist.all_reduce`` has no autograd); use them on
statistics computed under ``torch.no_grad()``.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "agree_any",
    "all_gather_stack",
    "all_reduce_max",
    "all_reduce_mean",
    "all_reduce_mean_autograd",
    "all_reduce_sum",
    "gather_buffers",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "rank",
    "scatter_buffers",
    "world_size",
    "wrap_ddp",
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


def all_gather_stack(tensor: Tensor) -> Tensor:
    """Every process's ``tensor`` stacked along a new first dimension (``[W, ...]``).

    Collective: every process must call it. Without a process group: ``tensor[None]``.
    """
    if not (is_distributed() and world_size() > 1):
        return tensor.unsqueeze(0)
    local = tensor.contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.stack(parts)


def agree_any(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of per-process booleans (a signal or a clock seen by one process).

    Collective with one host sync: call it only where the processes already wait for each
    other (log steps). Without a process group the flags are returned unchanged.
    """
    if not (is_distributed() and world_size() > 1):
        return list(flags)
    values = torch.tensor([float(f) for f in flags], device=device)
    all_reduce_max(values)
    return [bool(v) for v in values.cpu().tolist()]


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``MASTER_*``).

    Uses nccl for CUDA devices (after selecting ``device``, the ``LOCAL_RANK`` GPU) and gloo
    otherwise. An existing default group is kept (tests create one themselves).

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` outside ``torchrun``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank(), world_size()


def gather_buffers(module: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """``{name: [W, ...]}`` of the named buffers of every process, on CPU (collective)."""
    buffers = dict(module.named_buffers())
    return {name: all_gather_stack(buffers[name]).cpu() for name in names}


def scatter_buffers(module: nn.Module, parts: dict[str, Tensor]) -> None:
    """Inverse of :func:`gather_buffers`: this process's slice back into each buffer.

    Raises:
        ValueError: the parts were gathered from another number of processes.
    """
    buffers = dict(module.named_buffers())
    for name, stacked in parts.items():
        if stacked.shape[0] != world_size():
            raise ValueError(
                f"{name} was saved by {stacked.shape[0]} processes; resume with as many "
                f"(now {world_size()})"
            )
        buffers[name].copy_(stacked[rank()])


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` with several processes, else ``module`` itself.

    Buffers are not broadcast at each forward: the components that hold statistics
    (centres, queues) all-reduce them themselves, and Leopart's queue shards differ per
    process by design.
    """
    if world_size() == 1:
        return module
    with warnings.catch_warnings():  # torch 2.14 deprecates broadcast_buffers, whose
        # replacement still syncs buffers at init; keep the documented rank-local behaviour.
        warnings.simplefilter("ignore", FutureWarning)
        return nn.parallel.DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
        )


class _AllReduceMean(torch.autograd.Function):
    """Mean over processes in the forward pass, identity in the backward pass."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        return all_reduce_mean(tensor.clone().contiguous())

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def all_reduce_mean_autograd(tensor: Tensor) -> Tensor:
    """Differentiable mean over processes (identity without a process group).

    The backward pass returns the incoming gradient unchanged: DDP's gradient averaging
    then yields the exact gradient of a loss computed from the global mean (FLSL's
    ``AllReduce``), provided every process contributes equally many rows.
    """
    return _AllReduceMean.apply(tensor)
