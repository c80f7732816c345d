"""NeCo's reference patches: a random draw from the whole batch's aligned teacher patches.

Official code vpariza/NeCo @3932160, ``src/neco.py`` ``NeCo.knn_loss`` (the branch without a
queue, the DINO ViT-S/16 setting): for every crop pair the teacher's RoI-aligned patches of
the whole batch, ``[B, D, o, o]``, are flattened to ``B·o²`` rows, shuffled by one
``randperm(B·o²)`` and cut back into ``B`` sets of ``o²``. So each image's references are
``o²`` distinct rows drawn from every image of the batch, its own included, and every row is
some image's reference exactly once. Student and teacher sort against the same set.

Here the same joint permutation is drawn in a way that does not depend on how the batch is
split over processes (2 x B/2 must train like 1 x B, ``docs/adding-a-method.md``): the rows
of every process are gathered; images are put in the order of their sample keys
(``batch["key"]``, :mod:`densessl.ops.keyed_random`) and each row gets a keyed 32-bit
score; sorting the rows by score (stable, so ties fall back to that canonical order) is the
permutation, and the image at key rank ``k`` takes rows ``k·o² … (k+1)·o² − 1`` of it.
Without keys (direct calls, tests) the official ``torch.randperm`` of this process is used.
"""

from __future__ import annotations

import torch
from torch import Tensor

from densessl.ops.distributed import all_gather_stack, rank
from densessl.ops.keyed_random import keyed_bits

__all__ = ["shuffled_references"]


@torch.no_grad()
def shuffled_references(aligned: Tensor, keys: Tensor | None = None, salt: int = 0) -> Tensor:
    """Reference patches of every image: a joint random permutation of the batch's patches.

    Args:
        aligned: ``[B, D, o, o]`` the teacher's RoI-aligned embeddings of this crop pair
            (this process's images).
        keys: ``[B]`` int64 sample keys, or None for the official ``torch.randperm``.
        salt: separates the draws of different crop pairs (one draw per pair, as the
            official code redraws for every pair).

    Returns:
        ``[B, D, o, o]``: image ``b``'s ``o²`` references laid out as a grid (row-major),
        the layout in which the official code hands them to ``compute_knn_perm_mat``.
    """
    batch, dim, height, width = aligned.shape
    count = height * width
    rows = aligned.permute(0, 2, 3, 1).reshape(batch * count, dim)
    if keys is None:
        index = torch.randperm(batch * count, device=aligned.device)
        picked = rows[index]
    else:
        if keys.shape != (batch,):
            raise ValueError(f"keys must be [{batch}], got {list(keys.shape)}")
        keys = keys.to(aligned.device).long()
        all_rows = all_gather_stack(rows).reshape(-1, count, dim)  # [W·B, o², D]
        all_keys = all_gather_stack(keys).reshape(-1)  # [W·B]
        image_order = torch.argsort(all_keys, stable=True)
        canonical = all_rows[image_order].reshape(-1, dim)  # images in key order
        scores = keyed_bits(all_keys[image_order], salt, count).reshape(-1)
        permutation = torch.argsort(scores, stable=True).reshape(-1, count)
        key_rank = torch.empty_like(image_order)
        key_rank[image_order] = torch.arange(image_order.numel(), device=keys.device)
        mine = key_rank[rank() * batch + torch.arange(batch, device=keys.device)]
        picked = canonical[permutation[mine].reshape(-1)]
    return picked.reshape(batch, height, width, dim).permute(0, 3, 1, 2)
