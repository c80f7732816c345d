"""A data order that can be resumed mid-epoch and split across processes exactly."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Shuffled, distributed, resumable sampler yielding ``(epoch, index)`` pairs.

    The epoch's permutation depends only on ``(seed, epoch)``. Global batch ``k`` is the
    permutation slice ``[k * B, (k + 1) * B)`` (``B`` = global batch) and process ``r`` of
    ``W`` takes its strided share, so ``W`` processes with ``B / W`` images each see exactly
    the images one process with ``B`` sees. Incomplete last batches are dropped. Yielding the
    epoch with each index lets persistent workers augment per epoch without ``set_epoch``.
    """

    def __init__(
        self,
        length: int,
        global_batch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size}")
        self.length = length
        self.global_batch = global_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.length // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and skip its first ``start_batch`` global batches (resume)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        per_rank = self.global_batch // self.world_size
        return (self.batches_per_epoch - self.start_batch) * per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        used = order[: self.batches_per_epoch * self.global_batch]
        for b in range(self.start_batch, self.batches_per_epoch):
            block = used[b * self.global_batch : (b + 1) * self.global_batch]
            for index in block[self.rank :: self.world_size].tolist():
                yield self.epoch, index


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the global RNG at ``step`` on process ``rank`` (a function of the three only)."""
    mixed = ((seed * 1_000_003 + step) * 2_654_435_761 + rank * 40_503 + 1) % (2**63 - 1)
    return mixed
