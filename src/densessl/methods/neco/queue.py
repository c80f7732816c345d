"""NeCo's reference queue: a FIFO of past teacher patches the references are drawn from.

Official code vpariza/NeCo @3932160, ``src/neco.py`` ``NeCo.update_queue`` and the queue branch
of ``NeCo.knn_loss`` (``is_queue_usable: True``, ``queue_length: 8192`` in the DINOv2 configs,
e.g. ``experiments/configs/models/small/neco_dinov2r.yml`` lines 34 and 60). Per target view
c (global crop), before the loss of each step:

1. **push**: ``n = min(rows_per_image · B, length)`` rows drawn at random (no repeats) from
   the teacher's whole ``h x w`` embedding map of crop c over the batch (``B·h·w`` rows) go
   to the front of ``queue[c]``; the oldest ``n`` rows fall off the end;
2. **draw**, for every crop pair (c, v): ``index = randperm(length)[:B·o²] % E``, and image
   b's ``o²`` references are rows ``b·o² … (b+1)·o² − 1`` of ``queue[c][index]``.

``E`` is the official ``entries_in_queue``: **one counter shared by both crops**, grown by n
at each crop's push, so it runs twice as fast as each queue fills (it reaches ``length``
after ``length / (2n)`` steps, the queues after ``length / n``: 7 and 13 at B = 64); until
the queues are full part of ``[0, E)`` points at rows no push reached yet, which are all zero
(cosine similarity 0 to every query: about half the references at first), and the modulo
repeats rows.
``draw="official"`` (the default, like every NeCo default here: it is what trained the
published models; it touches the first ~0.03 % of the DINOv2-R schedule) reproduces this;
``draw="filled"`` draws only among the rows ``queue[c]`` holds, distinct while it holds at
least ``B·o²`` (repeats, by the same modulo, only below that).

Distributed: every process keeps the **whole** queue (``length`` rows, identical on every
process; the official code keeps a ``length / W`` shard of its own images per process). The
pushed rows are chosen by sample keys (:mod:`densessl.ops.keyed_random`): every row
``(image, token)`` gets a keyed 32-bit score, each process offers its ``n`` best, the offers
are gathered and the ``n`` best overall (ties by key, then token) are pushed in score order
— a uniform random ``n``-subset in random order, as ``randperm``, but the same for any split
of the batch. The draw's permutation of the ``length`` slots is keyed by the whole batch's
keys and the crop pair, and the image at key rank k takes its slice k. So ``W x B/W``
trains like ``1 x B``, and resumes are exact (the queue and counters are buffers, saved in
checkpoints). Without keys (direct calls) both use the official ``torch.randperm`` calls,
in the official order, so seeded runs equal the official code's.

Shapes: ``embeddings [T, length, D]`` float32 (row 0 is the newest), ``count [T]`` rows each
queue holds, ``entries []`` the shared official counter.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from densessl.ops.distributed import all_gather_stack, rank, world_size
from densessl.ops.keyed_random import keyed_bits

__all__ = ["QUEUE_DRAWS", "ReferenceQueue"]

QUEUE_DRAWS = ("official", "filled")
_PUSH_SALT = 0x4E65_0000  # keyed salts: pushes use _PUSH_SALT + target,
_DRAW_SALT = 0x4E65_8000  # draws _DRAW_SALT + crop-pair salt


class ReferenceQueue(nn.Module):
    """FIFO of teacher patch embeddings per target view (module docstring).

    Args:
        num_targets: T, target views with a queue each (NeCo: the 2 global crops).
        length: rows per queue (NeCo's DINOv2 configs: 8192), on every process.
        dim: embedding size (the projection's output, 256).
        rows_per_image: rows pushed per step and target, per image of the (global) batch
            (NeCo: 10, i.e. ``10·B``).
        draw: ``"official"`` (shared counter, zero rows early on) or ``"filled"``.
    """

    embeddings: Tensor
    count: Tensor
    entries: Tensor

    def __init__(
        self,
        num_targets: int,
        length: int,
        dim: int,
        rows_per_image: int = 10,
        draw: str = "official",
    ) -> None:
        super().__init__()
        if min(num_targets, length, dim, rows_per_image) < 1:
            raise ValueError(
                "queue needs num_targets, length, dim, rows_per_image >= 1, got "
                f"{num_targets}, {length}, {dim}, {rows_per_image}"
            )
        if draw not in QUEUE_DRAWS:
            raise ValueError(f"unknown queue draw {draw!r}; choose from {QUEUE_DRAWS}")
        self.length = length
        self.rows_per_image = rows_per_image
        self.draw_mode = draw
        self.register_buffer("embeddings", torch.zeros(num_targets, length, dim))
        self.register_buffer("count", torch.zeros(num_targets, dtype=torch.long))
        self.register_buffer("entries", torch.zeros((), dtype=torch.long))

    def fill(self, target: int) -> Tensor:
        """Float scalar: the fraction of queue ``target``'s rows filled (no host sync)."""
        return self.count[target].float() / self.length

    @torch.no_grad()
    def push(self, target: int, grid: Tensor, keys: Tensor | None = None) -> None:
        """Put ``n = min(rows_per_image · B_global, length)`` random rows of ``grid`` in front.

        Args:
            target: which queue (the target view's index).
            grid: ``[B, D, h, w]`` the teacher's embeddings of that view (this process's
                images).
            keys: ``[B]`` int64 sample keys (keyed choice over the batch of every process,
                ``B_global = W·B``), or None for the official ``torch.randperm`` (CPU
                generator) over this process's batch alone (``B_global = B``).
        """
        batch, dim, height, width = grid.shape
        tokens = height * width
        rows = grid.detach().permute(0, 2, 3, 1).reshape(batch * tokens, dim).float()
        processes = 1 if keys is None else world_size()
        wanted = min(self.rows_per_image * batch * processes, self.length)
        if keys is None:
            new = rows[torch.randperm(rows.shape[0])[:wanted].to(rows.device)]
        else:
            new = self._keyed_rows(target, rows, keys.to(rows.device).long(), wanted, tokens)
        pushed = new.shape[0]
        queue = self.embeddings[target]
        if pushed < self.length:
            queue[pushed:] = queue[:-pushed].clone()
        queue[:pushed] = new[: self.length]
        self.count[target] = torch.clamp(self.count[target] + pushed, max=self.length)
        self.entries.copy_(torch.clamp(self.entries + pushed, max=self.length))

    def _keyed_rows(
        self, target: int, rows: Tensor, keys: Tensor, wanted: int, tokens: int
    ) -> Tensor:
        """The ``wanted`` rows of the gathered batch with the highest keyed scores."""
        batch = keys.shape[0]
        if keys.shape != (batch,) or rows.shape[0] != batch * tokens:
            raise ValueError(f"keys must be [B] for {rows.shape[0]} rows of {tokens} tokens")
        scores = keyed_bits(keys, _PUSH_SALT + target, tokens).reshape(-1)
        image = keys.repeat_interleave(tokens)
        token = torch.arange(tokens, device=rows.device).repeat(batch)
        offer = min(wanted, rows.shape[0])
        local = _ranked(scores, image, token)[:offer]
        gathered = [
            all_gather_stack(part[local]).flatten(0, 1) for part in (scores, image, token, rows)
        ]
        best = _ranked(*gathered[:3])[:wanted]
        return gathered[3][best]

    @torch.no_grad()
    def draw(
        self, target: int, batch: int, count: int, keys: Tensor | None = None, salt: int = 0
    ) -> Tensor:
        """Each image's ``count`` references, ``[batch, count, D]``, from queue ``target``.

        Args:
            target: which queue.
            batch: this process's images.
            count: references per image (``o²``).
            keys: ``[batch]`` sample keys (keyed, split-invariant draw) or None (official
                ``torch.randperm`` on the queue's device).
            salt: separates the draws of the crop pairs (one per pair, as the official).
        """
        device = self.embeddings.device
        if keys is None:
            perm = torch.randperm(self.length, device=device)
            mine = torch.arange(batch, device=device)
            total = batch * count
        else:
            if keys.shape != (batch,):
                raise ValueError(f"keys must be [{batch}], got {list(keys.shape)}")
            all_keys = all_gather_stack(keys.to(device).long()).reshape(-1)
            order = torch.argsort(all_keys, stable=True)
            key_rank = torch.empty_like(order)
            key_rank[order] = torch.arange(order.numel(), device=device)
            mine = key_rank[rank() * batch + torch.arange(batch, device=device)]
            batch_key = keyed_bits(all_keys, _DRAW_SALT + salt, 1).sum().reshape(1)
            scores = keyed_bits(batch_key, _DRAW_SALT + salt, self.length).reshape(-1)
            perm = torch.argsort(scores, stable=True)
            total = all_keys.numel() * count
        if self.draw_mode == "official":
            entries = self.entries
        else:
            entries = self.count[target]
            perm = perm[torch.argsort((perm >= entries).to(torch.uint8), stable=True)]
        if total > self.length:  # the official code fails here; repeat the permutation
            perm = perm.repeat(-(-total // self.length))
        index = torch.remainder(perm[:total], entries.clamp_min(1)).reshape(-1, count)[mine]
        return self.embeddings[target][index]


def _ranked(scores: Tensor, image: Tensor, token: Tensor) -> Tensor:
    """Indices by score (highest first), ties by image key, then token (stable sorts)."""
    order = torch.argsort(token, stable=True)
    order = order[torch.argsort(image[order], stable=True)]
    return order[torch.argsort(scores[order], descending=True, stable=True)]
